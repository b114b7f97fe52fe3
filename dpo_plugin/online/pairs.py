"""Pairs from a group of ranked samples of one prompt: which sample is chosen over which, and which pairs are ties.

A group is the K rewards r_1..r_K of K completions of one prompt. `best_worst` pairs the highest-reward sample with
the lowest (RLHFlow's iterative DPO); `best_random` the highest with one other drawn uniformly; `all_pairs` every
(i, j) with r_i > r_j. A pair whose gap r_chosen − r_rejected is 0, or below `min_reward_margin`, carries no
preference and is dropped. Ties among equal rewards keep the earlier sample, so the result is deterministic.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

PAIR_RULES = ("best_worst", "best_random", "all_pairs")


def group_pairs(
    rewards: Sequence[float], rule: str, min_reward_margin: float, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(chosen, rejected) indices into one group's samples under `rule`, without the pairs whose reward gap is 0 or
    below `min_reward_margin`; `rng` draws `best_random`'s partner."""
    order = sorted(range(len(rewards)), key=lambda index: -rewards[index])  # stable: equal rewards keep their order
    best = order[0]
    if rule == "best_worst":
        candidates = [(best, order[-1])]
    elif rule == "best_random":
        others = order[1:]
        candidates = [(best, others[int(rng.integers(len(others)))])] if others else []
    elif rule == "all_pairs":
        candidates = [(i, j) for i, j in itertools.combinations(order, 2)]
    else:
        raise ValueError(f"pair_rule {rule!r} is not one of {PAIR_RULES}.")
    return [
        (chosen, rejected)
        for chosen, rejected in candidates
        if rewards[chosen] - rewards[rejected] > 0 and rewards[chosen] - rewards[rejected] >= min_reward_margin
    ]
