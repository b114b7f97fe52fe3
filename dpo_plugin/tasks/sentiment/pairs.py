"""`sentiment-pairs` and `review-pairs`: attribute pairs from Pang & Lee's human sentiment labels (one-sentence and
full reviews), and the sentence split every part of the sentiment task shares."""

from __future__ import annotations

import random

from datasets import Dataset

from ...data.assets import read_polarity
from ...data.builtin import BUILTIN_SPLITS

SENTIMENT_PAIRS_SEED = 20240531
SENTIMENT_PAIRS_HELD_OUT_FRACTION = 0.25
SENTIMENT_PAIRS_PARTNERS = 2  # rejected partners per chosen sentence and prompt
SENTIMENT_PROMPTS = {
    1: "Write a positive one-sentence movie review.",
    -1: "Write a negative one-sentence movie review.",
}
REVIEW_PROMPTS = {1: "Write a positive movie review.\n", -1: "Write a negative movie review.\n"}
REVIEW_PAIRS_SEED = 20240601


def sentiment_pairs(split: str) -> Dataset:
    """Attribute pairs from human labels on the Pang & Lee sentences (not human pairwise judgments).

    For the prompt "Write a positive one-sentence movie review." a sentence that people labelled positive is
    chosen over one they labelled negative; the mirror prompt asks for a negative review and flips the pair.
    The sentences of each label are split first (a fixed seeded 75% train / 25% test), and pairs are formed
    within a split, so no sentence appears in both: 6,000 train pairs and 2,000 test pairs, half per prompt.
    Per prompt, each sentence of the asked-for label is chosen over ``SENTIMENT_PAIRS_PARTNERS`` different
    sentences of the other label (a seeded shuffle, then cyclic shifts of it), so every sentence is chosen twice and
    rejected twice in its split and no pair repeats; the rows come in a seeded random order. Conversational (TRL) format
    with a stable ``id`` column such as ``"sp-train-00042"``; identical on every run and machine.
    """
    rng = random.Random(SENTIMENT_PAIRS_SEED)
    rows = _attribute_pairs(
        sentence_splits(rng)[split], SENTIMENT_PROMPTS, SENTIMENT_PAIRS_PARTNERS, rng, _conversation
    )
    return Dataset.from_list([{"id": f"sp-{split}-{index:05d}", **row} for index, row in enumerate(rows)])


def review_pairs(split: str) -> Dataset:
    """Attribute pairs from human labels on the 1,500 Pang & Lee full reviews: for "Write a positive movie review."
    a review people labelled positive is chosen over one labelled negative, and the mirror. As `sentiment_pairs`,
    with one partner: each label's reviews are split 75/25 (seed `REVIEW_PAIRS_SEED`) before pairing, 1,124 train
    and 376 test pairs. String (standard) format, so any tokenizer reads it, chat template or not; completions run to
    hundreds of tokens (truncated by `max_length`), the long completions a memory benchmark needs."""
    rng = random.Random(REVIEW_PAIRS_SEED)
    reviews = read_polarity("reviews")
    texts = {
        label: _split_held_out([r.text for r in reviews if r.label == label], rng)[split] for label in REVIEW_PROMPTS
    }
    rows = _attribute_pairs(texts, REVIEW_PROMPTS, 1, rng, lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r})
    return Dataset.from_list([{"id": f"rp-{split}-{index:05d}", **row} for index, row in enumerate(rows)])


def _attribute_pairs(texts: dict[int, list[str]], prompts: dict[int, str], partners: int, rng, make_row) -> list[dict]:
    """Per prompt, each text of the asked-for label chosen over `partners` texts of the other (a seeded shuffle, then
    cyclic shifts of it), the rows in a seeded random order."""
    rows = []
    for wanted, unwanted in ((1, -1), (-1, 1)):
        rejected_texts = list(texts[unwanted])
        rng.shuffle(rejected_texts)
        for shift in range(partners):
            shifted = rejected_texts[shift:] + rejected_texts[:shift]
            rows += [make_row(prompts[wanted], c, r) for c, r in zip(texts[wanted], shifted, strict=False)]
    rng.shuffle(rows)
    return rows


def sentence_splits(rng: random.Random | None = None) -> dict[str, dict[int, list[str]]]:
    """The Pang & Lee sentences that ``sentiment_pairs`` uses, as ``{split: {label: texts}}``.

    Each label's sentences (file order) are shuffled with ``rng`` and cut 25% ``"test"`` / 75% ``"train"``, label 1
    first, then -1: 1,500 + 500 sentences per label. ``rng`` defaults to a fresh
    ``random.Random(SENTIMENT_PAIRS_SEED)``; ``sentiment_pairs`` passes its own and goes on drawing from it, so the
    same seed gives the same splits here.
    """
    rng = random.Random(SENTIMENT_PAIRS_SEED) if rng is None else rng
    sentences = read_polarity("sentences")
    splits: dict[str, dict[int, list[str]]] = {split: {} for split in BUILTIN_SPLITS}
    for label in SENTIMENT_PROMPTS:
        held_out = _split_held_out([row.text for row in sentences if row.label == label], rng)
        for split in BUILTIN_SPLITS:
            splits[split][label] = held_out[split]
    return splits


def _split_held_out(texts: list[str], rng: random.Random) -> dict[str, list[str]]:
    """Shuffle ``texts`` with ``rng`` and cut off the held-out fraction as ``"test"``."""
    shuffled = list(texts)
    rng.shuffle(shuffled)
    held_out = round(len(shuffled) * SENTIMENT_PAIRS_HELD_OUT_FRACTION)
    return {"test": shuffled[:held_out], "train": shuffled[held_out:]}


def _conversation(prompt: str, chosen: str, rejected: str) -> dict[str, list[dict[str, str]]]:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }
