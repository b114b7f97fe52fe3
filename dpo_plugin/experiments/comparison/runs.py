"""The parts of the DPO paper's comparison (`command.py` runs them): its config, one training run per method, and the
held-out evaluation every run goes through.

Every method starts from the same reference checkpoint and trains LoRA adapters on the same `sentiment-generation`
pairs (completions the reference sampled for real review prefixes, ranked by the gold sentiment classifier): DPO, IPO
and TDPO2 with `PreferenceTrainer`; RLHF as a Bradley–Terry reward model (TRL's `RewardTrainer`) then PPO with a KL
penalty (`rlhf/`); and, where the recipe lists `online` arms, on-policy DPO/IPO/TDPO (`OnlinePreferenceTrainer`)
whose pairs are the policy's own samples ranked by the gold labeller or the reward model. Each is evaluated through
the gymnasium environments on held-out prompts and pairs: preference accuracy by implicit reward, reward-model score
and gold reward of sampled completions, KL(π_θ ‖ π_ref), wall time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import TrainerCallback
from transformers import set_seed as set_all_seeds

from ...data.loading import first_rows, load_preference_dataset
from ...evaluation.evaluator import HeldoutEvaluator
from ...evaluation.heldout import Accuracy, SampleReport
from ...evaluation.scoring import as_text
from ...objectives.losses import OBJECTIVES
from ...online.recipe import build_online_trainer, parse_online_recipe
from ...rlhf.recipe import build_ppo_trainer, parse_ppo_recipe
from ...tasks.sentiment.generation import SentimentGenerationSettings
from ...training.interruption import Interrupted
from ...training.recipe import build_trainer, parse_recipe
from ...utils.errors import ConfigError
from ...utils.validation import Rule, check, each, integer_at_least, number_above, required

logger = logging.getLogger("dpo_plugin")


STRENGTH = number_above(0.0, "(β, or PPO's KL coefficient)")
# An online arm is "objective/ranker"; the ranker labels the policy's samples: the gold classifier that labelled the
# offline pairs (the same labeller), or the reward model trained on them
RANKERS = ("gold", "reward_model")
ONLINE_ARM = Rule(
    lambda arm: isinstance(arm, str) and arm.partition("/")[0] in OBJECTIVES and arm.partition("/")[2] in RANKERS,
    f"be objective/ranker (objective: {', '.join(OBJECTIVES)}; ranker: {', '.join(RANKERS)})",
)
# PPO against the Bradley–Terry reward model trained on the pairs, and against the gold reward itself (the DPO
# paper's PPO-GT: the reward the reward model estimates, with no estimation error)
PPO_METHODS = ("ppo", "ppo/gold")
COUNTS = ("train_prompts", "test_prompts", "eval_pairs", "eval_prompts", "probe_pairs", "probe_prompts", "probes")
COMPARE_RULES = {
    **{name: integer_at_least(1) for name in COUNTS},
    "samples_per_prompt": integer_at_least(2, "(a pair per two samples)"),
    "max_new_tokens": integer_at_least(1),
    "batch_size": integer_at_least(1),
    "beta": STRENGTH,
    "kl_coef": STRENGTH,
    "beta_sweep": each(STRENGTH, empty_ok=True),
    "kl_coef_sweep": each(STRENGTH, empty_ok=True),
    "claim_pairs": integer_at_least(1),
    "claim_epochs": number_above(0.0),
    "online": each(ONLINE_ARM, empty_ok=True),
}


@dataclass
class CompareConfig:
    """What `dpo-plugin compare` trains and evaluates; each method's own settings live in the recipes it names."""

    model_name_or_path: str = field(
        default="smollm2-135m-instruct", metadata={"help": "The reference checkpoint every method starts from."}
    )
    output_dir: str = field(default="outputs/compare", metadata={"help": "Where the runs and the report go."})
    train_prompts: int = field(default=512, metadata={"help": "sentiment-generation: training prompts."})
    test_prompts: int = field(default=200, metadata={"help": "sentiment-generation: held-out prompts (one pair each)."})
    samples_per_prompt: int = field(
        default=2, metadata={"help": "sentiment-generation: reference samples per prompt (samples // 2 pairs)."}
    )
    max_new_tokens: int = field(
        default=24, metadata={"help": "Completion length, in tokens, for the data and every sampled evaluation."}
    )
    preference_recipe: str = field(
        default="recipes/compare/preference.yaml",
        metadata={"help": "The `dpo-plugin train` recipe DPO, IPO and TDPO2 share (loss_type and beta are set here)."},
    )
    reward_model_recipe: str = field(
        default="recipes/compare/reward_model.yaml", metadata={"help": "The reward model's RewardModelConfig recipe."}
    )
    ppo_recipe: str = field(
        default="recipes/compare/ppo.yaml", metadata={"help": "PPO's recipe: PPOConfig and TRL ModelConfig keys."}
    )
    objectives: list[str] = field(
        default_factory=lambda: ["dpo", "ipo", "tdpo2"], metadata={"help": "The preference objectives to train."}
    )
    beta: float = field(default=0.1, metadata={"help": "β of the preference objectives in the main comparison."})
    kl_coef: float = field(default=0.1, metadata={"help": "PPO's KL coefficient in the main comparison."})
    seeds: list[int] = field(
        default_factory=lambda: [42], metadata={"help": "Seeds of the main comparison (every method, each seed)."}
    )
    beta_sweep: list[float] = field(
        default_factory=list, metadata={"help": "More DPO β values for the frontier plot (first seed only)."}
    )
    kl_coef_sweep: list[float] = field(
        default_factory=list, metadata={"help": "More PPO KL coefficients for the frontier plot (first seed only)."}
    )
    eval_pairs: int = field(default=200, metadata={"help": "Held-out pairs ranked by each trained policy."})
    eval_prompts: int = field(default=64, metadata={"help": "Held-out prompts each trained policy completes."})
    probe_pairs: int = field(
        default=100, metadata={"help": "Held-out pairs ranked at each probe during training (the first eval_pairs)."}
    )
    probe_prompts: int = field(
        default=16, metadata={"help": "Held-out prompts sampled at each probe during training (KL, gold reward)."}
    )
    probes: int = field(default=4, metadata={"help": "Evaluations during each training run (plus one before it)."})
    batch_size: int = field(default=16, metadata={"help": "Batch size of every evaluation."})
    claims: bool = field(
        default=True, metadata={"help": "Also check Azar et al.'s DPO-vs-IPO claim on sentiment-pairs (claims.py)."}
    )
    claim_pairs: int = field(default=256, metadata={"help": "sentiment-pairs training pairs for the claim runs."})
    claim_epochs: float = field(default=2.0, metadata={"help": "Epochs of the claim runs."})
    ppo: bool = field(default=True, metadata={"help": "Train RM + PPO for each seed (and the kl_coef_sweep)."})
    online: list[str] = field(
        default_factory=list,
        metadata={
            "help": "On-policy arms for each seed, `objective/ranker` (ranker: gold, the labeller of the offline "
            "pairs, or reward_model, the Bradley–Terry model trained on them), e.g. dpo/gold; each runs online_recipe."
        },
    )
    online_recipe: str = field(
        default="recipes/compare/online.yaml",
        metadata={"help": "The `dpo-plugin online` recipe of the online arms (loss_type, beta, rewards are set here)."},
    )

    def __post_init__(self):
        required(self, "seeds", "objectives", hint="see recipes/compare_dpo_ppo.yaml")
        check(self, COMPARE_RULES)
        unknown = sorted(set(self.objectives) - set(OBJECTIVES))
        if unknown:
            raise ConfigError(f"objectives {unknown} are not known. Valid values: {', '.join(OBJECTIVES)}.")
        if self.kl_coef_sweep and not self.ppo:
            raise ConfigError("kl_coef_sweep sweeps PPO: set ppo: true, or leave kl_coef_sweep empty.")
        for name in self.recipes_used:
            if not Path(getattr(self, name)).is_file():
                raise ConfigError(f"{name}: {getattr(self, name)} is not a file (paths are relative to where you run).")

    def recipe_of(self, method: str) -> str:
        """The recipe a run of `method` trains with: PPO's, the online arms', or the preference objectives'."""
        if method in PPO_METHODS:
            return self.ppo_recipe
        return self.online_recipe if method.startswith("online-") else self.preference_recipe

    @property
    def recipes_used(self) -> list[str]:
        """The recipe keys this comparison reads."""
        return (
            ["preference_recipe", "reward_model_recipe"]
            + ["ppo_recipe"] * self.ppo
            + ["online_recipe"] * bool(self.online)
        )

    @property
    def data_settings(self) -> SentimentGenerationSettings:
        return SentimentGenerationSettings(
            model=self.model_name_or_path,
            train_prompts=self.train_prompts,
            test_prompts=self.test_prompts,
            samples_per_prompt=self.samples_per_prompt,
            max_new_tokens=self.max_new_tokens,
        )


@dataclass
class RunResult:
    """One trained policy: what it is, how long it took, and how it did on held-out data."""

    method: str
    seed: int
    strength: float  # β for the preference objectives, the KL coefficient for PPO
    steps: int
    train_seconds: float
    accuracy: Accuracy
    samples: SampleReport
    probes: list[dict] = field(default_factory=list)  # held-out evaluations during training
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # training log: name -> [[step, value], ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunResult:
        accuracy, samples = Accuracy(**values["accuracy"]), SampleReport(**values["samples"])
        return cls(**(values | {"accuracy": accuracy, "samples": samples}))


class ComparisonEvaluation:
    """Every method's policy against one shared reference on the same held-out data (`HeldoutEvaluator`).

    `accuracy(policy)`: PreferencePairs-v0 over `pairs`, choosing by implicit reward log π_θ/π_ref (β does not change
    a ranking, so DPO's and PPO's policies are ranked alike). `samples(policy, n)`: Completion-v0 over the first `n`
    prompts with the reward components, and the sampled KL(π_θ ‖ π_ref), always with sampling seed 0 (common random
    numbers: the methods differ by their policies, not by the draw). The reference's scores are memoized across
    policies, so each held-out completion is scored by the reference once. Everything runs in float32.

    `probe(policy, step)`: a point of the training curves. Every run starts from the reference (LoRA adapters start
    at zero), so the step-0 point is the reference's, computed once; `last_samples` keeps the latest probe's samples,
    which are a run's final samples when it probed its last step on `eval_prompts` prompts.
    """

    def __init__(self, reference, tokenizer, pairs, prompts, rewards, config: CompareConfig):
        self.reference, self.pairs, self.prompts, self.rewards = reference, pairs, prompts, rewards
        self.generation = {"max_new_tokens": config.max_new_tokens}
        self.evaluator = HeldoutEvaluator(
            (reference, contextlib.nullcontext), (reference, contextlib.nullcontext), tokenizer, config.batch_size
        )
        self.probe_seconds = 0.0  # time spent in `probe`, so training times can leave it out
        self.last_samples: SampleReport | None = None
        self._start: dict | None = None
        self._reference_samples: dict[int, SampleReport] = {}

    def accuracy(self, policy, pairs: int | None = None) -> Accuracy:
        return self._of(policy).accuracy(first_rows(self.pairs, pairs))

    def samples(self, policy, n: int) -> SampleReport:
        """Completion-v0 over the first `n` prompts; the reference's samples are drawn once per `n` and kept (the
        same seed gives the same draw)."""
        if policy is not self.reference:
            return self._of(policy).samples(self.prompts[:n], self.rewards, self.generation)
        if n not in self._reference_samples:
            self._reference_samples[n] = self._of(policy).samples(self.prompts[:n], self.rewards, self.generation)
        return self._reference_samples[n]

    def probe(self, policy, step: int, config: CompareConfig) -> dict:
        """A point of the during-training curves: accuracy on `probe_pairs`, each reward and the KL of
        `probe_prompts` samples, with their standard errors over the prompts (`<name>_se`)."""
        if step == 0 and self._start is not None:
            return self._start
        started = time.perf_counter()
        model = self.reference if step == 0 else policy
        samples = self.samples(model, config.probe_prompts)
        accuracy = self.accuracy(model, config.probe_pairs).value
        point = {"step": step, "accuracy": accuracy, "kl": samples.kl, **samples.rewards}
        point |= {f"{name}_se": error for name, error in samples.standard_errors.items()}
        self.probe_seconds += time.perf_counter() - started
        self.last_samples = samples
        if step == 0:
            self._start = point
        return point

    def final_samples(self, policy, config: CompareConfig, probed_last_step: bool) -> SampleReport:
        """The trained policy's samples of `eval_prompts` prompts: the last probe's where it was of this policy at
        its last step on as many prompts (the same draw), else sampled now."""
        if probed_last_step and config.probe_prompts == config.eval_prompts and self.last_samples is not None:
            return self.last_samples
        return self.samples(policy, config.eval_prompts)

    def _of(self, policy) -> HeldoutEvaluator:
        return self.evaluator.with_policy((policy, contextlib.nullcontext))


class ProbeCallback(TrainerCallback):
    """Runs `evaluator.probe` before training and every `every` optimizer steps, keeping the results in `probes`."""

    def __init__(self, evaluator: ComparisonEvaluation, every: int, config: CompareConfig):
        self.evaluator, self.every, self.config = evaluator, every, config
        self.probes: list[dict] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.probes.append(self.evaluator.probe(model, 0, self.config))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.probes.append(self.evaluator.probe(model, state.global_step, self.config))


def probe_interval(total_steps: int, probes: int) -> int:
    return max(1, math.ceil(total_steps / probes))


def train_preference(
    config: CompareConfig,
    evaluator: ComparisonEvaluation,
    dataset: str,
    objective: str,
    beta: float,
    seed: int,
    output_dir: Path,
    extra: tuple[str, ...] = (),
) -> RunResult:
    """Train one preference objective with the shared recipe (`extra`: more `--key value` flags for it), probe it
    during training and evaluate it."""
    set_all_seeds(seed)
    overrides = ["--dataset_name", dataset, "--loss_type", objective, "--beta", str(beta), "--seed", str(seed)]
    overrides += ["--output_dir", str(output_dir), "--model_name_or_path", config.model_name_or_path, *extra]
    data_args, training_args, model_args, _ = parse_recipe(["--config", config.preference_recipe, *overrides])
    trainer, train_pairs, _ = build_trainer(data_args, training_args, model_args)
    steps_per_epoch = math.ceil(len(train_pairs) / training_args.per_device_train_batch_size)
    total_steps = math.ceil(steps_per_epoch * training_args.num_train_epochs)
    probe = ProbeCallback(evaluator, probe_interval(total_steps, config.probes), config)
    trainer.add_callback(probe)
    started, probing = time.perf_counter(), evaluator.probe_seconds
    trainer.train()
    _stop_if_interrupted(trainer.interrupted_by, objective, seed)
    seconds = time.perf_counter() - started - (evaluator.probe_seconds - probing)
    trainer.save_model(str(output_dir))
    policy = trainer.accelerator.unwrap_model(trainer.model)
    return RunResult(
        method=objective,
        seed=seed,
        strength=beta,
        steps=trainer.state.global_step,
        train_seconds=round(seconds, 1),  # without the probes' time
        accuracy=evaluator.accuracy(policy),
        samples=evaluator.final_samples(policy, config, probed_last_step=True),
        probes=probe.probes,
        curves=_curves(trainer.state.log_history, ("loss", "rewards/margins", "rewards/accuracies", "kl/chosen")),
    )


def train_ppo(
    config: CompareConfig,
    evaluator: ComparisonEvaluation,
    train_prompts,
    reward_fn,
    kl_coef: float,
    seed: int,
    output_dir: Path,
    extra: tuple[str, ...] = (),
    method: str = "ppo",
) -> RunResult:
    """PPO from the same reference (LoRA adapters; the reference is the policy with them off) against `reward_fn`
    (`method`, one of `PPO_METHODS`, names which); `extra`: more `--key value` flags for its recipe."""
    set_all_seeds(seed)
    overrides = ["--seed", str(seed), "--kl_coef", str(kl_coef), "--output_dir", str(output_dir)]
    overrides += ["--model_name_or_path", config.model_name_or_path, *extra]
    _, ppo_config, model_args = parse_ppo_recipe(["--config", config.ppo_recipe, *overrides], "dpo-plugin compare")
    ppo_config.eval_steps = probe_interval(ppo_config.steps, config.probes)
    probe = lambda ppo: evaluator.probe(ppo.policy, ppo.step, config)  # noqa: E731
    trainer = build_ppo_trainer(ppo_config, model_args, reward_fn, train_prompts, eval_fn=probe)
    probing = evaluator.probe_seconds
    trainer.train()
    seconds = trainer.train_seconds - (evaluator.probe_seconds - probing)
    probes = [
        {key.removeprefix("eval/"): value for key, value in entry.items() if key.startswith("eval/")}
        for entry in trainer.log_history
        if any(key.startswith("eval/") for key in entry)
    ]
    return RunResult(
        method=method,
        seed=seed,
        strength=kl_coef,
        steps=ppo_config.steps,
        train_seconds=round(seconds, 1),  # without the probes' time
        accuracy=evaluator.accuracy(trainer.policy),
        samples=evaluator.final_samples(trainer.policy, config, probed_last_step=True),
        probes=probes,
        curves=_curves(trainer.log_history, ("score/mean", "kl/mean", "loss/policy", "loss/value")),
    )


def train_online(
    config: CompareConfig,
    evaluator: ComparisonEvaluation,
    dataset: str,
    arm: str,
    ranker: str,
    beta: float,
    seed: int,
    output_dir: Path,
    extra: tuple[str, ...] = (),
) -> RunResult:
    """One online arm, `objective/ranker`: `online_recipe`'s rounds from the reference on `dataset`'s training
    prompts, the policy's samples ranked by `ranker` (a `reward_funcs` string), probed after each round (step =
    rounds done); `extra`: more `--key value` flags for the recipe. A run stopped part-way resumes after its last
    complete round."""
    objective = arm.partition("/")[0]
    set_all_seeds(seed)
    overrides = ["--dataset_name", dataset, "--reward_funcs", ranker, "--loss_type", objective]
    overrides += ["--beta", str(beta), "--seed", str(seed), "--output_dir", str(output_dir)]
    overrides += ["--model_name_or_path", config.model_name_or_path, "--eval_prompts", "0", *extra]
    script_args, online_config, model_args = parse_online_recipe(
        ["--config", config.online_recipe, *overrides], "dpo-plugin compare (online)"
    )
    rounds_run: list[int] = []

    def probe(policy, round_index: int) -> dict:
        rounds_run.append(round_index)
        return evaluator.probe(policy, round_index + 1, config)

    trainer = build_online_trainer(script_args, online_config, model_args, eval_fn=probe)
    started, probing = time.perf_counter(), evaluator.probe_seconds
    trainer.train()
    _stop_if_interrupted(trainer.interrupted_by, f"online {arm}", seed)
    seconds = time.perf_counter() - started - (evaluator.probe_seconds - probing)
    probes = [evaluator.probe(trainer.model, 0, config)]
    for metrics in trainer.rounds:  # each round's probe, kept in its metrics (resumed rounds' too)
        probes.append({key.removeprefix("eval/"): value for key, value in metrics.items() if key.startswith("eval/")})
    curves = {
        key: [[r["round"] + 1, r[key]] for r in trainer.rounds if key in r]
        for key in ("reward/mean", "kl", "rewards/margins", "groups/tie_fraction", "pairs")
    }
    return RunResult(
        method=f"online-{arm}",
        seed=seed,
        strength=beta,
        steps=sum(r.get("steps", 0) for r in trainer.rounds),
        train_seconds=round(seconds, 1),  # sampling, ranking and training, without the probes' time
        accuracy=evaluator.accuracy(trainer.model),
        samples=evaluator.final_samples(trainer.model, config, probed_last_step=online_config.rounds - 1 in rounds_run),
        probes=probes,
        curves=curves,
    )


def _stop_if_interrupted(signal_number: int | None, what: str, seed: int) -> None:
    """After SIGTERM/SIGINT stopped a run (its trainer saved what it had), stop what runs it too (`Interrupted`)."""
    if signal_number is not None:
        raise Interrupted(signal_number, f"{what} (seed {seed})")


def _curves(log_history: list[dict], keys: tuple[str, ...]) -> dict[str, list[list[float]]]:
    """[[step, value], ...] per logged key, from a training log (entries without the key are skipped)."""
    return {
        key: [[entry["step"], entry[key]] for entry in log_history if key in entry and "step" in entry]
        for key in keys
        if any(key in entry for entry in log_history)
    }


def heldout_text(dataset_name: str, tokenizer, pairs: int):
    """The first `pairs` held-out pairs as the strings TRL trains on, and their prompts."""
    text = as_text(first_rows(load_preference_dataset(dataset_name, "test"), pairs), tokenizer)
    return text, list(text["prompt"])
