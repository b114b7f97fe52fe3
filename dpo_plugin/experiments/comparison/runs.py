"""The parts of the DPO paper's comparison (`command.py` runs them): its config, one training run per method, and the
held-out evaluation every run goes through.

Every method starts from the same reference checkpoint and trains LoRA adapters on the same `sentiment-generation`
pairs (completions the reference sampled for real review prefixes, ranked by the gold sentiment classifier): DPO, IPO
and TDPO2 with `PreferenceTrainer`; RLHF as a Bradley–Terry reward model (TRL's `RewardTrainer`) then PPO with a KL
penalty (`rlhf/`). Each is evaluated through the gymnasium environments on held-out prompts and pairs: preference
accuracy by implicit reward, reward-model score and gold reward of sampled completions, KL(π_θ ‖ π_ref), wall time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
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
from ...rlhf.recipe import build_ppo_trainer, parse_ppo_recipe
from ...tasks.sentiment.generation import SentimentGenerationSettings
from ...training.recipe import build_trainer, parse_recipe
from ...utils.errors import ConfigError
from ...utils.validation import check, each, integer_at_least, number_above, required

logger = logging.getLogger("dpo_plugin")


STRENGTH = number_above(0.0, "(β, or PPO's KL coefficient)")
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

    def __post_init__(self):
        required(self, "seeds", "objectives", hint="see recipes/compare_dpo_ppo.yaml")
        check(self, COMPARE_RULES)
        unknown = sorted(set(self.objectives) - set(OBJECTIVES))
        if unknown:
            raise ConfigError(f"objectives {unknown} are not known. Valid values: {', '.join(OBJECTIVES)}.")
        for name in ("preference_recipe", "reward_model_recipe", "ppo_recipe"):
            if not Path(getattr(self, name)).is_file():
                raise ConfigError(f"{name}: {getattr(self, name)} is not a file (paths are relative to where you run).")

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


class ComparisonEvaluation:
    """Every method's policy against one shared reference on the same held-out data (`HeldoutEvaluator`).

    `accuracy(policy)`: PreferencePairs-v0 over `pairs`, choosing by implicit reward log π_θ/π_ref (β does not change
    a ranking, so DPO's and PPO's policies are ranked alike). `samples(policy, n)`: Completion-v0 over the first `n`
    prompts with the reward components, and the sampled KL(π_θ ‖ π_ref), always with sampling seed 0 (common random
    numbers: the methods differ by their policies, not by the draw). The reference's scores are memoized across
    policies, so each held-out completion is scored by the reference once. Everything runs in float32.
    """

    def __init__(self, reference, tokenizer, pairs, prompts, rewards, config: CompareConfig):
        self.pairs, self.prompts, self.rewards = pairs, prompts, rewards
        self.generation = {"max_new_tokens": config.max_new_tokens}
        self.evaluator = HeldoutEvaluator(
            (reference, contextlib.nullcontext), (reference, contextlib.nullcontext), tokenizer, config.batch_size
        )
        self.probe_seconds = 0.0  # time spent in `probe`, so training times can leave it out

    def accuracy(self, policy, pairs: int | None = None) -> Accuracy:
        return self._of(policy).accuracy(first_rows(self.pairs, pairs))

    def samples(self, policy, n: int) -> SampleReport:
        return self._of(policy).samples(self.prompts[:n], self.rewards, self.generation)

    def probe(self, policy, step: int, config: CompareConfig) -> dict:
        """A point of the during-training curves: accuracy on `probe_pairs`, gold reward and KL of `probe_prompts`
        samples."""
        started = time.perf_counter()
        samples = self.samples(policy, config.probe_prompts)
        accuracy = self.accuracy(policy, config.probe_pairs).value
        point = {"step": step, "accuracy": accuracy, "kl": samples.kl, **samples.rewards}
        self.probe_seconds += time.perf_counter() - started
        return point

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
    """Train one preference objective with the shared recipe, probe it during training and evaluate it."""
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
    if trainer.interrupted_by is not None:  # SIGTERM/SIGINT: the trainer saved a checkpoint; stop the comparison too
        name = signal.Signals(trainer.interrupted_by).name
        logger.warning("%s: comparison stopped during %s (seed %d); no report was written.", name, objective, seed)
        sys.exit(128 + trainer.interrupted_by)
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
        samples=evaluator.samples(policy, config.eval_prompts),
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
) -> RunResult:
    """PPO from the same reference (LoRA adapters; the reference is the policy with them off) against `reward_fn`."""
    set_all_seeds(seed)
    overrides = ["--seed", str(seed), "--kl_coef", str(kl_coef), "--output_dir", str(output_dir)]
    overrides += ["--model_name_or_path", config.model_name_or_path]
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
        method="ppo",
        seed=seed,
        strength=kl_coef,
        steps=ppo_config.steps,
        train_seconds=round(seconds, 1),  # without the probes' time
        accuracy=evaluator.accuracy(trainer.policy),
        samples=evaluator.samples(trainer.policy, config.eval_prompts),
        probes=probes,
        curves=_curves(trainer.log_history, ("score/mean", "kl/mean", "loss/policy", "loss/value")),
    )


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
