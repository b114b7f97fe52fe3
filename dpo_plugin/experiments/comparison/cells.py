"""`experiment: comparison` in a sweep grid (`dpo-plugin sweep`): each cell trains one method of the comparison at
one strength and seed, from the reference, and evaluates it on the held-out prompts and pairs.

A cell's values: `config` (a `dpo-plugin compare` recipe: the data, the evaluation and the method recipes), `method`
(a preference objective, `ppo` against the reward model, `ppo/gold` against the gold reward (the DPO paper's PPO-GT),
or `online-<objective>/<ranker>` with ranker `gold` or `reward_model`), `beta` (the preference objectives and online
arms; default the recipe's) or `kl_coef` (PPO), `seed`, `recipe_overrides` (keys of the method's own recipe, e.g.
`{num_train_epochs: 3}`), `reward_model_score` (true: also score every sample by the reward model; default false),
and any other `CompareConfig` key. Cells are scored by the gold reward (and the reward model where asked), so only
cells that rank by the reward model, train PPO against it or are scored by it train one.

Recorded: metrics `gold` (mean gold reward of one sample per held-out prompt), `kl` (sampled KL(π_θ ‖ π_ref)),
`rm_score` (the reward model's mean score of the same samples, where asked), `accuracy` (held-out pairs ranked by
implicit reward) and `steps`; per prompt `gold`, `kl` (and `rm_score`), and the reference's (`start_per_prompt`,
KL 0); seconds `setup` (data, reference and reward model, paid by a process's first cell), `train` (for online arms
sampling and ranking too), `evaluate` (probes during training and the final evaluation); details: the held-out
`probes` during training (step 0 is the reference; keyed by the metric names), the training log's `curves` (name
-> [[step, value], ...]: e.g. rewards/margins) and, where a reward model is used, its held-out accuracy and training
time.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import yaml

from ...objectives.losses import OBJECTIVES
from ...utils.errors import ConfigError, NonFiniteTrainingError, one_line
from .runs import ONLINE_ARM, PPO_METHODS, CompareConfig
from .setup import ComparisonSetup

# metric name -> the held-out reward component it reads; the reward model's only where a cell asks for it
METRICS = {"gold": "gold_sentiment", "rm_score": "reward_model"}
PROBE_NAMES = {reward + suffix: name + suffix for name, reward in METRICS.items() for suffix in ("", "_se")}
# CompareConfig keys that say which runs `compare` trains: a cell is one run, named by method, strength and seed
PLAN_KEYS = ("output_dir", "seeds", "objectives", "online", "ppo", "beta_sweep", "kl_coef_sweep", "beta", "kl_coef")
PLAN_KEYS += ("claims", "claim_pairs", "claim_epochs")


class ComparisonCells:
    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.setup: ComparisonSetup | None = None

    def parse(self, values: dict) -> tuple[CompareConfig, str, float, int, dict, tuple[str, ...]]:
        """(the CompareConfig, method, strength, seed, recipe overrides, the reward components it is scored by) of a
        cell's values; a `ConfigError` naming a bad key."""
        values = dict(values)
        method, seed = values.pop("method", None), values.pop("seed")
        recipe_overrides = values.pop("recipe_overrides", {})
        if not isinstance(recipe_overrides, dict):
            raise ConfigError(f"recipe_overrides must be a mapping of recipe keys; got {recipe_overrides!r}.")
        reward_model_score = values.pop("reward_model_score", False)
        if not isinstance(reward_model_score, bool):
            raise ConfigError(f"reward_model_score must be true or false; got {reward_model_score!r}.")
        eval_rewards = ("reward_model",) * reward_model_score + ("gold_sentiment",)
        path = values.pop("config", None)
        recipe = yaml.safe_load(Path(path).read_text()) if path else {}
        if path and not isinstance(recipe, dict):
            raise ConfigError(f"config: {path} is not a mapping of compare keys.")
        merged = {**recipe, **values, "output_dir": str(self.output_dir), "seeds": [seed], "claims": False}
        fields = set(CompareConfig.__dataclass_fields__)
        unknown = sorted(set(merged) - fields)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)} for a comparison cell (compare's keys, or method).")
        config = CompareConfig(**merged)
        online = isinstance(method, str) and method.startswith("online-")
        if not (method in (*OBJECTIVES, *PPO_METHODS) or online and ONLINE_ARM.test(method.removeprefix("online-"))):
            raise ConfigError(
                f"method must be one of {', '.join((*OBJECTIVES, *PPO_METHODS))}, or online-objective/ranker "
                f"(ranker: gold or reward_model); got {method!r}."
            )
        strength = config.kl_coef if method in PPO_METHODS else config.beta
        return config, method, strength, seed, recipe_overrides, eval_rewards

    def settings(self, values: dict) -> dict:
        config, method, strength, seed, recipe_overrides, eval_rewards = self.parse(values)
        recipe = config.recipe_of(method)
        settings = {"method": method, "strength": strength, "seed": seed, "eval_rewards": list(eval_rewards)}
        settings["compare"] = {key: value for key, value in vars(config).items() if key not in PLAN_KEYS}
        settings["recipe"] = yaml.safe_load(Path(recipe).read_text()) | recipe_overrides
        if uses_reward_model(method, eval_rewards):
            settings["reward_model_recipe"] = yaml.safe_load(Path(config.reward_model_recipe).read_text())
        return settings

    def run(self, values: dict, folder: Path):
        from ..sweep.grid import CellFailed, CellResult

        config, method, strength, seed, recipe_overrides, eval_rewards = self.parse(values)
        started = time.perf_counter()
        if self.setup is None or not self.setup.shares(config, eval_rewards):
            self.setup = ComparisonSetup(config, eval_rewards)
        setup = self.setup
        start = setup.evaluator.samples(setup.reference, config.eval_prompts)
        details = {}
        if uses_reward_model(method, eval_rewards):
            details |= {"reward_model_accuracy": setup.reward_model["accuracy"]}
            details |= {"reward_model_train_seconds": setup.reward_model["train_seconds"]}
        setup_seconds = time.perf_counter() - started
        try:
            result = setup.train(config, method, strength, seed, folder, as_flags(recipe_overrides))
        except NonFiniteTrainingError as error:
            raise CellFailed(f"diverged: {one_line(error)}") from error
        samples = result.samples
        if not all(math.isfinite(value) for value in (*samples.rewards.values(), samples.kl)):
            raise CellFailed(f"diverged: non-finite held-out rewards {samples.rewards} or KL {samples.kl}")
        total = time.perf_counter() - started
        metrics = {name: reward for name, reward in METRICS.items() if reward in eval_rewards}
        return CellResult(
            metrics={name: samples.rewards[reward] for name, reward in metrics.items()}
            | {"kl": samples.kl, "accuracy": result.accuracy.value, "steps": result.steps},
            per_prompt={name: samples.per_prompt[reward] for name, reward in metrics.items()}
            | {"kl": samples.per_prompt["kl"]},
            start_per_prompt={name: start.per_prompt[reward] for name, reward in metrics.items()}
            | {"kl": [0.0] * start.completions},
            seconds={
                "setup": setup_seconds,
                "train": result.train_seconds,
                "evaluate": total - setup_seconds - result.train_seconds,
            },
            details=details | {"probes": [_metric_names(probe) for probe in result.probes], "curves": result.curves},
        )


def _metric_names(probe: dict) -> dict:
    """A held-out probe with its reward components (and their `_se`) under the cell's metric names."""
    return {PROBE_NAMES.get(key, key): value for key, value in probe.items()}


def uses_reward_model(method: str, eval_rewards: tuple[str, ...]) -> bool:
    """Whether a cell needs the reward model: it ranks by it, trains PPO against it or is scored by it."""
    return method == "ppo" or method.endswith("/reward_model") or "reward_model" in eval_rewards


def as_flags(values: dict) -> tuple[str, ...]:
    """`{key: value}` as the `--key value` flags TRL's parser reads (a list: its items; a boolean: true/false)."""
    flags = []
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(str(item).lower() if isinstance(item, bool) else str(item) for item in items)]
    return tuple(flags)
