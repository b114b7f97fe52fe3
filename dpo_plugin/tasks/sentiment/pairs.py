"""`sentiment-pairs`: attribute pairs from Pang & Lee's human sentiment labels, and the sentence split every part
of the sentiment task shares."""

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
    split_texts = sentence_splits(rng)[split]

    rows = []
    for wanted, unwanted in ((1, -1), (-1, 1)):
        rejected_texts = list(split_texts[unwanted])
        rng.shuffle(rejected_texts)
        for shift in range(SENTIMENT_PAIRS_PARTNERS):
            partners = rejected_texts[shift:] + rejected_texts[:shift]
            pairs = zip(split_texts[wanted], partners, strict=True)
            rows += [_conversation(SENTIMENT_PROMPTS[wanted], chosen, rejected) for chosen, rejected in pairs]
    rng.shuffle(rows)
    return Dataset.from_list([{"id": f"sp-{split}-{index:05d}", **row} for index, row in enumerate(rows)])


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
