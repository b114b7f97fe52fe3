"""Reward functions `reward_fn(prompts, completions) -> list[float]`, the contract of the environments (`RewardFn`).

Each scores a whole batch in one call. Prompts and completions are text as TRL tokenizes it (`scoring.as_text`).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager

import torch

from ..data.model_folders import model_folder
from ..utils.devices import default_device
from ..utils.errors import UserError
from .scoring import SequenceScorer


class PreferenceLabelReward:
    """The human label itself: r(x, y) = the fraction of the labelled pairs containing (x, y) in which y was chosen.

    1.0 for a completion always preferred, 0.0 for one always rejected. A completion the pairs never show for that
    prompt has no label: a `ValueError`, not a made-up value.
    """

    __name__ = "preference_label"

    def __init__(self, pairs: Iterable[Mapping[str, str]]):
        self._wins_and_appearances: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for row in pairs:
            for column, won in (("chosen", 1), ("rejected", 0)):
                counts = self._wins_and_appearances[row["prompt"], row[column]]
                counts[0] += won
                counts[1] += 1

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        rewards = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if (prompt, completion) not in self._wins_and_appearances:
                raise ValueError(
                    f"No preference label for completion {completion[:60]!r} of prompt {prompt[:60]!r}: the label "
                    "reward only scores completions that appear in its labelled pairs."
                )
            wins, appearances = self._wins_and_appearances[prompt, completion]
            rewards.append(wins / appearances)
        return rewards


class ImplicitReward:
    """r(x, y) = β (log π_θ(y|x) − log π_ref(y|x)): the reward a DPO policy implicitly defines."""

    __name__ = "implicit_reward"

    def __init__(self, policy: SequenceScorer, reference: SequenceScorer, beta: float):
        self.policy, self.reference, self.beta = policy, reference, beta

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return (self.beta * (self.policy(prompts, completions) - self.reference(prompts, completions))).tolist()


class RewardModelReward:
    """r(x, y) = the single logit of a sequence-classification reward model on the text x + y, in batches.

    For a Bradley–Terry model such as one trained with TRL's `RewardTrainer` (`num_labels=1`).
    """

    __name__ = "reward_model"

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 16,
        max_length: int | None = None,
        context: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ):
        if model.config.num_labels != 1:
            raise UserError(
                f"A reward model has one output (num_labels=1, as TRL's RewardTrainer trains it); this one has "
                f"{model.config.num_labels}."
            )
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length, self.context = batch_size, max_length, context

    @classmethod
    def from_pretrained(cls, path: str, batch_size: int = 16, max_length: int | None = None) -> RewardModelReward:
        """A reward-model checkpoint (folder, hub id), on the GPU when there is one, in eval mode."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = model_folder(path, "reward_model_name_or_path")
        model = AutoModelForSequenceClassification.from_pretrained(path).to(default_device()).eval()
        return cls(model, AutoTokenizer.from_pretrained(path), batch_size, max_length)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        texts = [prompt + completion for prompt, completion in zip(prompts, completions, strict=True)]
        rewards = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                add_special_tokens=False,
                return_tensors="pt",
            ).to(self.model.device)
            with self.context():
                rewards += self.model(**batch).logits[:, 0].float().tolist()
        return rewards
