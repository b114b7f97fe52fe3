"""The gold sentiment classifier: TF-IDF + logistic regression trained on Pang & Lee's human labels.

It is the "gold" reward of the DPO paper's sentiment setup, here a classic text classifier rather than a neural one,
so that it shares nothing with the language models it rates. It trains on the training-split sentences of
`sentiment-pairs` plus the 1,500 full reviews, and is scored on the held-out sentences, which `sentiment-pairs`
never trains a policy on either.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from .data import read_polarity
from .data.builtin import sentence_splits

logger = logging.getLogger("dpo_plugin")

POSITIVE, NEGATIVE = 1, -1


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
