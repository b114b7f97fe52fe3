"""The Bradley–Terry reward model of the RLHF baseline, trained with TRL's own `RewardTrainer`.

The model is the reference checkpoint with a one-output sequence-classification head; it learns r(x, y) by minimising
−log σ(r(x, y_chosen) − r(x, y_rejected)) over the preference pairs, and is judged by how often it ranks held-out pairs
correctly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from dpo_plugin_envs import RewardFn
from dpo_plugin_envs.completion import checked_rewards
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import RewardConfig, RewardTrainer

from ..data.assets import resolve_model
from ..evaluation.heldout import Accuracy
from ..evaluation.rewards import RewardModelReward
from ..evaluation.scoring import as_text
from ..utils.validation import check, integer_at_least, number_above, required

REWARD_MODEL_RULES = {
    "learning_rate": number_above(0.0),
    "num_train_epochs": number_above(0.0),
    "per_device_train_batch_size": integer_at_least(1),
    "eval_batch_size": integer_at_least(1),
    "max_length": integer_at_least(1),
}


@dataclass
class RewardModelConfig:
    """How `train_reward_model` trains: full fine-tuning of the whole checkpoint and its new reward head."""

    output_dir: str = field(
        default="outputs/reward-model", metadata={"help": "Where the trained model and its tokenizer are saved."}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak AdamW learning rate (linear decay)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Pairs per optimizer step and device."})
    eval_batch_size: int = field(
        default=16, metadata={"help": "Texts per reward-model call when ranking held-out pairs."}
    )
    max_length: int = field(
        default=128,
        metadata={
            "help": "Longest prompt + completion, in tokens. TRL's RewardTrainer drops longer training pairs; "
            "held-out pairs are truncated to it when ranked."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of the new reward head's weights and of the data order."})

    def __post_init__(self):
        required(self, "output_dir", hint="the folder the reward model is saved in")
        check(self, REWARD_MODEL_RULES)

    def reward_config(self) -> RewardConfig:
        """TRL's `RewardConfig` for these settings: on a CPU without bf16; no gradient checkpointing, no checkpoints."""
        cuda = torch.cuda.is_available()
        return RewardConfig(
            output_dir=self.output_dir,
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            per_device_train_batch_size=self.per_device_train_batch_size,
            max_length=self.max_length,
            seed=self.seed,
            use_cpu=not cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(),
            activation_checkpointing=False,  # (gradient_checkpointing, renamed) only costs time here
            save_strategy="no",  # train_reward_model saves the final model itself
            report_to="none",
        )


@dataclass
class RewardModelResult:
    """A trained reward model: where it is, how well it ranks held-out pairs, and how its training went."""

    path: Path
    accuracy: Accuracy
    eval_pairs: int
    train_pairs: int  # after TRL dropped the pairs longer than max_length
    train_seconds: float
    log_history: list[dict] = field(default_factory=list)


def train_reward_model(
    model_path: str, train_pairs: Dataset, eval_pairs: Dataset, config: RewardModelConfig
) -> RewardModelResult:
    """Train a Bradley–Terry reward model from the causal LM ``model_path`` on ``train_pairs`` with TRL's
    `RewardTrainer`, save it (and its tokenizer) to ``config.output_dir``, and rank ``eval_pairs`` with it.

    ``model_path``: a folder, hub id or bundled name (``smollm2-135m-instruct``), loaded as
    ``AutoModelForSequenceClassification`` with ``num_labels=1`` (a new, seeded head). Pairs are TRL preference data,
    string or conversational; a tokenizer without a pad token pads with EOS. Held-out pairs are scored as the trainer
    sees its text: chat template applied, EOS appended (`scoring.as_text`).
    """
    path = resolve_model(model_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_seed(config.seed)  # the score head is new, with random weights
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(
        model=model, args=config.reward_config(), train_dataset=train_pairs, processing_class=tokenizer
    )
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    trainer.save_model(config.output_dir)

    reward = RewardModelReward(trainer.model.eval(), tokenizer, config.eval_batch_size, config.max_length)
    accuracy = pairwise_accuracy(reward, as_text(eval_pairs, tokenizer), config.eval_batch_size)
    return RewardModelResult(
        path=Path(config.output_dir),
        accuracy=accuracy,
        eval_pairs=len(eval_pairs),
        train_pairs=len(trainer.train_dataset),
        train_seconds=train_seconds,
        log_history=trainer.state.log_history,
    )


def pairwise_accuracy(reward_fn: RewardFn, pairs: Iterable[Mapping[str, str]], batch_size: int = 16) -> Accuracy:
    """The fraction of ``pairs`` (rows with string prompt, chosen, rejected) with r(chosen) > r(rejected), and its
    95% Wilson interval. A tie counts as wrong (PreferencePairs-v0 would score it 50% on average).

    ``reward_fn(prompts, completions) -> rewards`` rates both completions of ``batch_size`` pairs per call.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    rows = list(pairs)
    if not rows:
        raise ValueError("pairs is empty: pairwise accuracy needs at least one pair.")
    correct = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        prompts = [row["prompt"] for row in batch]
        output = reward_fn(prompts * 2, [row["chosen"] for row in batch] + [row["rejected"] for row in batch])
        rewards = checked_rewards(getattr(reward_fn, "__name__", "reward"), output, 2 * len(batch))
        correct += [rewards[index] > rewards[len(batch) + index] for index in range(len(batch))]  # [chosen; rejected]
    return Accuracy.of(torch.tensor(correct))
