"""Built-in preference datasets, by name: each is an entry point `"module:function"` (as gymnasium registers its
environments), imported only when that dataset is loaded, so the data layer imports no task and no model."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from datasets import Dataset

from ..utils.errors import UserError

BUILTIN_SPLITS = ("train", "test")

# name -> `function(split) -> Dataset`, or the "module:function" that defines it.
BUILTIN_DATASETS: dict[str, str | Callable[[str], Dataset]] = {
    "sentiment-pairs": "dpo_plugin.tasks.sentiment.pairs:sentiment_pairs",
    "review-pairs": "dpo_plugin.tasks.sentiment.pairs:review_pairs",
    "sentiment-generation": "dpo_plugin.tasks.sentiment.generation:sentiment_generation_split",
}


def load_builtin(name: str, split: str) -> Dataset:
    """A built-in dataset (a key of ``BUILTIN_DATASETS``) for ``split`` ``"train"`` or ``"test"`` (held out)."""
    if name not in BUILTIN_DATASETS:
        raise UserError(f"Unknown built-in dataset {name!r}: choose one of {sorted(BUILTIN_DATASETS)}.")
    if split not in BUILTIN_SPLITS:
        raise UserError(f"Built-in dataset {name!r} has no split {split!r}: choose one of {list(BUILTIN_SPLITS)}.")
    loader = BUILTIN_DATASETS[name]
    if isinstance(loader, str):
        module, function = loader.split(":")
        loader = getattr(importlib.import_module(module), function)
    return loader(split)
