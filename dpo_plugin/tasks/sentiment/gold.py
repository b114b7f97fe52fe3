"""The gold sentiment reward: a TF-IDF + logistic regression classifier trained on Pang & Lee's human labels.

It is the "gold" reward of the DPO paper's sentiment setup, here a classic text classifier rather than a neural one,
so that it shares nothing with the language models it rates. It trains on the training-split sentences of
`sentiment-pairs` plus the 1,500 full reviews, and is scored on the held-out sentences, which `sentiment-pairs`
never trains a policy on either.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...data.assets import read_polarity
from ...utils.errors import UserError
from .pairs import sentence_splits

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

logger = logging.getLogger("dpo_plugin")

POSITIVE, NEGATIVE = 1, -1
# What the gold reward rates: the asked-for sentiment, as the prompt names it, or a fixed one.
GOLD_TARGETS = ("positive", "negative", "from_prompt")


@dataclass(frozen=True)
class GoldSentimentClassifier:
    """P(positive | text) from a fitted pipeline, and its accuracy on `held_out_size` held-out human-labelled texts."""

    pipeline: Pipeline
    held_out_accuracy: float
    held_out_size: int

    def summary(self) -> dict:
        """The held-out accuracy, for reports."""
        return {
            "held_out_accuracy": self.held_out_accuracy,
            "held_out_size": self.held_out_size,
            "description": f"TF-IDF + logistic regression, {100 * self.held_out_accuracy:.1f}% accuracy on "
            f"{self.held_out_size} held-out human-labelled sentences",
        }

    def positive_probability(self, texts: Sequence[str]) -> list[float]:
        """P(label = positive | text) for each text."""
        if not texts:
            return []
        positive_column = list(self.pipeline.classes_).index(POSITIVE)
        return self.pipeline.predict_proba(list(texts))[:, positive_column].tolist()


@functools.cache
def gold_sentiment_classifier() -> GoldSentimentClassifier:
    """Fit once per process (a few seconds): unigram+bigram TF-IDF (sublinear tf), L2 logistic regression (C=4)."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # imported here: scikit-learn takes a second to load
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    splits = sentence_splits()
    reviews = read_polarity("reviews")
    train_texts = [text for label in (POSITIVE, NEGATIVE) for text in splits["train"][label]]
    train_labels = [label for label in (POSITIVE, NEGATIVE) for _ in splits["train"][label]]
    train_texts += [row.text for row in reviews]
    train_labels += [row.label for row in reviews]
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
        LogisticRegression(C=4.0, max_iter=2000),
    )
    pipeline.fit(train_texts, train_labels)
    test_texts = [text for label in (POSITIVE, NEGATIVE) for text in splits["test"][label]]
    test_labels = [label for label in (POSITIVE, NEGATIVE) for _ in splits["test"][label]]
    accuracy = float((pipeline.predict(test_texts) == test_labels).mean())
    logger.info("Gold sentiment classifier: %.1f%% accuracy on %d held-out sentences", 100 * accuracy, len(test_texts))
    return GoldSentimentClassifier(pipeline, accuracy, len(test_texts))


class GoldSentimentReward:
    """r(x, y) = P(y has the asked-for sentiment), from the gold classifier trained on Pang & Lee's human labels.

    `target`: "positive", "negative", or "from_prompt" (the prompt names exactly one of the two words). Special-token
    strings (e.g. "<|im_end|>") are removed before classifying when a `tokenizer` is given. `with_prompt`: classify
    prompt + completion, the whole text, as the DPO paper's sentiment setup scores a continued review prefix; by
    default the completion alone.
    """

    __name__ = "gold_sentiment"

    def __init__(self, target: str = "from_prompt", tokenizer=None, with_prompt: bool = False):
        if target not in GOLD_TARGETS:
            raise ValueError(f"Unknown gold sentiment target {target!r}: choose one of {list(GOLD_TARGETS)}.")
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
            raise UserError(
                f"The gold sentiment reward reads the wanted sentiment from the prompt, but {prompt[-80:]!r} names "
                f"{' and '.join(sorted(named)) or 'neither positive nor negative'}; set its target explicitly."
            )
        return named == {"positive"}


def gold_positive_reward(tokenizer=None) -> GoldSentimentReward:
    """P(positive | prompt + completion): the labeller of `sentiment-generation`, as the DPO paper's sentiment task
    scores a continued review prefix (`reward_funcs: [gold_positive]`)."""
    return GoldSentimentReward("positive", tokenizer, with_prompt=True)


def gold_negative_reward(tokenizer=None) -> GoldSentimentReward:
    """P(negative | prompt + completion) (`reward_funcs: [gold_negative]`)."""
    return GoldSentimentReward("negative", tokenizer, with_prompt=True)


def gold_from_prompt_reward(tokenizer=None) -> GoldSentimentReward:
    """P(the sentiment the prompt asks for | completion), as `sentiment-pairs` prompts ask
    (`reward_funcs: [gold_from_prompt]`)."""
    return GoldSentimentReward("from_prompt", tokenizer)
