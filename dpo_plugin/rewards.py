"""Reward functions `reward_fn(prompts, completions) -> list[float]`, the contract of the `envs` environments.

Each scores a whole batch in one call. Prompts and completions are text as TRL tokenizes it (`scoring.as_text`).
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager

import torch

from .scoring import SequenceScorer
from .sentiment import gold_sentiment_classifier


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
            raise ValueError(
                f"A reward model has one output (num_labels=1, as TRL's RewardTrainer trains it); this one has "
                f"{model.config.num_labels}."
            )
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length, self.context = batch_size, max_length, context

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


class GoldSentimentReward:
    """r(x, y) = P(y has the asked-for sentiment), from the gold classifier trained on Pang & Lee's human labels.

    `target`: "positive", "negative", or "from_prompt" (the prompt names exactly one of the two words). Special-token
    strings (e.g. "<|im_end|>") are removed before classifying when a `tokenizer` is given. `with_prompt`: classify
    prompt + completion, the whole text, as the DPO paper's sentiment setup scores a continued review prefix; by
    default the completion alone.
    """

    __name__ = "gold_sentiment"
    TARGETS = ("positive", "negative", "from_prompt")

    def __init__(self, target: str = "from_prompt", tokenizer=None, with_prompt: bool = False):
        if target not in self.TARGETS:
            raise ValueError(f"Unknown gold sentiment target {target!r}: choose one of {list(self.TARGETS)}.")
        self.target, self.with_prompt = target, with_prompt
        self.classifier = gold_sentiment_classifier()
        special = sorted(tokenizer.all_special_tokens, key=len, reverse=True) if tokenizer is not None else []
        self._special = re.compile("|".join(map(re.escape, special))) if special else None

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)] if self.with_prompt else list(completions)
        if self._special is not None:
            texts = [self._special.sub(" ", text) for text in texts]
        positive = self.classifier.positive_probability(texts)
        return [p if self._wants_positive(prompt) else 1.0 - p for prompt, p in zip(prompts, positive, strict=True)]

    def _wants_positive(self, prompt: str) -> bool:
        if self.target != "from_prompt":
            return self.target == "positive"
        named = set(re.findall(r"\b(positive|negative)\b", prompt.lower()))
        if len(named) != 1:
            raise ValueError(
                f"The gold sentiment reward reads the wanted sentiment from the prompt, but {prompt[-80:]!r} names "
                f"{' and '.join(sorted(named)) or 'neither positive nor negative'}; set its target explicitly."
            )
        return named == {"positive"}
