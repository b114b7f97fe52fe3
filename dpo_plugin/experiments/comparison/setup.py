"""What the runs of one comparison share, each part built on first use, and one run of any method.

`dpo-plugin compare` trains its whole plan through one `ComparisonSetup`; `dpo-plugin sweep` (the `comparison`
cells, `cells.py`) keeps one per process and trains one cell at a time through it, so the data, the reference, the
reward model and the reference's held-out scores are built once however many cells run.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path

import torch

from ...data.assets import resolve_model
from ...data.loading import first_rows, load_preference_dataset
from ...evaluation.rewards import RewardModelReward
from ...rlhf.reward_model import RewardModelConfig, train_reward_model
from ...tasks.sentiment.generation import sentiment_generation
from ...tasks.sentiment.gold import GoldSentimentReward
from ...utils.atomic import write_json
from ...utils.config_files import parse_config
from ...utils.devices import default_device
from .runs import (
    PPO_METHODS,
    CompareConfig,
    ComparisonEvaluation,
    RunResult,
    heldout_text,
    train_online,
    train_ppo,
    train_preference,
)

logger = logging.getLogger("dpo_plugin")

# The held-out reward components every policy is scored by: the reward model's score and the gold reward
EVAL_REWARDS = ("reward_model", "gold_sentiment")
# The keys of a CompareConfig that what a setup holds depends on (the rest say which runs to train and how)
SHARED_KEYS = (
    "model_name_or_path",
    "output_dir",
    "train_prompts",
    "test_prompts",
    "samples_per_prompt",
    "max_new_tokens",
    "reward_model_recipe",
    "eval_pairs",
    "eval_prompts",
    "batch_size",
)


class ComparisonSetup:
    """The `sentiment-generation` data (built from the reference once, cached), the reference and its tokenizer, the
    Bradley–Terry reward model (`reward_model_recipe`, trained into output_dir/reward_model, reused while its
    settings hold), and the held-out evaluation (`ComparisonEvaluation`) scoring each of `rewards` (names from
    `EVAL_REWARDS`). Only what a run asks for is built: a comparison that neither ranks by the reward model nor
    scores with it never trains one."""

    def __init__(self, config: CompareConfig, rewards: tuple[str, ...] = EVAL_REWARDS):
        self.config, self.reward_names = config, rewards

    def shares(self, config: CompareConfig, rewards: tuple[str, ...]) -> bool:
        """Whether a run of `config` scored by `rewards` can use this setup."""
        return rewards == self.reward_names and all(
            getattr(config, key) == getattr(self.config, key) for key in SHARED_KEYS
        )

    @cached_property
    def data(self) -> str:
        return str(sentiment_generation(self.config.data_settings))

    @cached_property
    def reference_path(self) -> str:
        return resolve_model(self.config.model_name_or_path)

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.reference_path)

    @cached_property
    def reference(self):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.reference_path, dtype=torch.float32)
        return model.to(default_device()).eval().requires_grad_(False)

    @cached_property
    def train_pairs(self):
        return load_preference_dataset(self.data, "train")

    @cached_property
    def test_pairs(self):
        return load_preference_dataset(self.data, "test")

    @cached_property
    def reward_model(self) -> dict:
        """The reward model's `path`, held-out `accuracy` and `train_seconds` (`reward_model.json`)."""
        config = self.config
        summary_path = Path(config.output_dir) / "reward_model.json"
        settings = {"data": vars(config.data_settings), "recipe": Path(config.reward_model_recipe).read_text()}
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            if summary.get("settings") == settings and Path(summary["path"]).is_dir():
                logger.info("Reusing the reward model in %s.", summary["path"])
                return summary
        logger.info("Training the reward model on %d pairs (%s).", len(self.train_pairs), config.reward_model_recipe)
        _, rm_config = parse_config(
            (RewardModelConfig,),
            ["--config", config.reward_model_recipe, "--output_dir", str(Path(config.output_dir) / "reward_model")],
            "dpo-plugin compare (reward model)",
        )
        rm = train_reward_model(self.reference_path, self.train_pairs, self.test_pairs, rm_config)
        summary = {"path": str(rm.path), "accuracy": vars(rm.accuracy), "train_seconds": rm.train_seconds}
        write_json(summary_path, summary | {"settings": settings})
        return summary | {"settings": settings}

    @cached_property
    def reward_fn(self) -> RewardModelReward:
        return RewardModelReward.from_pretrained(self.reward_model["path"], self.config.batch_size)

    @cached_property
    def gold(self) -> GoldSentimentReward:
        return GoldSentimentReward("positive", self.tokenizer, with_prompt=True)

    @cached_property
    def evaluator(self) -> ComparisonEvaluation:
        config = self.config
        pairs, prompts = heldout_text(self.data, self.tokenizer, max(config.eval_pairs, config.eval_prompts))
        rewards = {name: self.reward_fn if name == "reward_model" else self.gold for name in self.reward_names}
        return ComparisonEvaluation(
            self.reference, self.tokenizer, first_rows(pairs, config.eval_pairs), prompts, rewards, config
        )

    def train(
        self, config: CompareConfig, method: str, strength: float, seed: int, run_dir: Path, extra: tuple = ()
    ) -> RunResult:
        """One run of `method` (a preference objective, `ppo` against the reward model, `ppo/gold` against the gold
        reward, or `online-<objective>/<ranker>`) at `strength` (β, or PPO's KL coefficient) and `seed`, into
        `run_dir`, evaluated on the held-out data; `extra`: more `--key value` flags for the method's recipe."""
        evaluator = self.evaluator
        if method in PPO_METHODS:
            prompt_rows = self.train_pairs.select_columns(["prompt"])
            reward = self.gold if method == "ppo/gold" else self.reward_fn
            return train_ppo(config, evaluator, prompt_rows, reward, strength, seed, run_dir, extra, method)
        if method.startswith("online-"):
            arm = method.removeprefix("online-")
            ranker = self.reward_model["path"] if arm.endswith("/reward_model") else "gold_positive"
            return train_online(config, evaluator, self.data, arm, ranker, strength, seed, run_dir, extra)
        return train_preference(config, evaluator, self.data, method, strength, seed, run_dir, extra)
