"""A `datasets:` mixture, as `trl dpo` recipes write it (TRL's `DatasetMixtureConfig`), read through the plugin's
loader: each part is a local file or folder, a built-in, a `json`/`csv`/`parquet` builder with `data_files`, or a hub
id; it is normalised and checked like `dataset_name`, and errors name the part.

Like TRL's `get_dataset`: each part reads its own `split` (default "train") and keeps its `columns`; `fraction`s are
target shares of the mixture, capped so that no part is oversampled (the first `round(share × total)` rows of each);
the parts are concatenated in order; `test_split_size` splits the mixture into "train" and "test". Unlike TRL, the
split is seeded (the recipe's `seed`), so the same recipe holds out the same pairs on every run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datasets import Dataset, concatenate_datasets

from ..utils.errors import ConfigError, UserError
from ..utils.validation import check_fields
from .builtin import BUILTIN_DATASETS
from .loading import load_preference_dataset, load_preference_files

# `datasets` builders whose `data_files` are local files the plugin reads itself
FILE_BUILDERS = ("json", "csv", "parquet")


def check_mixture(parts) -> None:
    """`ConfigError` naming the entry, for a `datasets:` value TRL's `DatasetConfig` cannot be built from: not a
    list, an entry that is not a mapping, without a `path`, with a key `DatasetConfig` does not have, or with a value
    not of its field's type. Run before TRL builds the entries (its own errors are tracebacks)."""
    from trl.scripts.utils import DatasetConfig

    keys = [field.name for field in dataclasses.fields(DatasetConfig)]
    if not isinstance(parts, list):
        raise ConfigError(
            f"datasets must be a list of datasets, each a mapping with a `path` (as in trl dpo recipes); got {parts!r}."
        )
    for index, part in enumerate(parts):
        if isinstance(part, DatasetConfig):
            continue
        if not isinstance(part, dict):
            raise ConfigError(f"datasets[{index}] must be a mapping of {', '.join(keys)}; got {part!r}.")
        unknown = sorted(set(part) - set(keys))
        if unknown:
            raise ConfigError(
                f"datasets[{index}]: unknown key(s) {', '.join(unknown)}; a dataset has {', '.join(keys)}."
            )
        if not part.get("path"):
            raise ConfigError(
                f"datasets[{index}] has no `path`: a local file or folder, a built-in name (sentiment-pairs), a "
                "json/csv/parquet builder with data_files, or a hub id."
            )
        check_fields(part, DatasetConfig, f"datasets[{index}]")


def load_mixture(parts: list, split: str, test_split_size: float | None, seed: int, names=("train", "test")):
    """Split `split` of the mixture of `parts` (`trl.scripts.utils.DatasetConfig`s): `names[0]` (the training
    split's name) is the whole mixture, or its training part when `test_split_size` is set; `names[1]` is the
    held-out part, which exists only with `test_split_size`."""
    if not parts:
        raise UserError("datasets: the mixture lists no dataset.")
    if split not in names:
        raise UserError(f"A datasets mixture has the splits {list(names)}, not {split!r}.")
    if split == names[1] and test_split_size is None:
        raise UserError(
            "The datasets mixture has no held-out split: set test_split_size (a fraction or a number of pairs, as "
            "in TRL), or heldout_eval_pairs: 0 and eval_strategy: no."
        )
    loaded = [_load_part(index, part) for index, part in enumerate(parts)]
    layouts = {isinstance(dataset[0]["prompt"], list) for dataset in loaded if len(dataset)}
    if len(layouts) > 1:
        kinds = [
            f"datasets[{i}] {'conversational' if isinstance(d[0]['prompt'], list) else 'standard'}"
            for i, d in enumerate(loaded)
        ]
        raise UserError(f"A mixture must use one layout, strings or messages: {', '.join(kinds)}.")
    mixture = concatenate_datasets(_shares(loaded, [part.fraction for part in parts]))
    if test_split_size is None:
        return mixture
    halves = mixture.train_test_split(test_size=test_split_size, seed=seed)
    return halves["train" if split == names[0] else "test"]


def _load_part(index: int, part) -> Dataset:
    """One part, normalised, with only its `columns` (and the three a preference dataset needs)."""
    label = f"datasets[{index}] ({part.path}, split {part.split!r})"
    try:
        if part.path in FILE_BUILDERS and part.data_files is not None:
            files = part.data_files.get(part.split) if isinstance(part.data_files, dict) else part.data_files
            if files is None:
                raise UserError(f"its data_files name no {part.split!r} split: {sorted(part.data_files)}")
            dataset = load_preference_files([Path(file).expanduser() for file in _as_list(files)], label)
        elif Path(part.path).expanduser().exists() or part.path in BUILTIN_DATASETS:
            dataset = load_preference_dataset(part.path, part.split, part.name)
        else:
            hub_options = {"data_dir": part.data_dir, "data_files": part.data_files}
            dataset = load_preference_dataset(part.path, part.split, part.name, **hub_options)
    except (UserError, ValueError, OSError) as error:
        raise UserError(f"{label}: {error}") from error
    if part.columns is not None:
        dataset = dataset.select_columns(list(dict.fromkeys([*part.columns, "prompt", "chosen", "rejected"])))
    return dataset


def _shares(datasets_list: list[Dataset], fractions: list[float | None]) -> list[Dataset]:
    """TRL's rule: with fractions, shares w_i = f_i / Σf, total = min_i len_i / w_i, and the first round(w_i · total)
    rows of each part; without, every row."""
    if all(fraction is None for fraction in fractions):
        return datasets_list
    if any(fraction is None for fraction in fractions):
        raise UserError("datasets: set fraction for every part of the mixture or for none.")
    if any(fraction < 0 for fraction in fractions) or sum(fractions) <= 0:
        raise UserError(f"datasets: fractions must be >= 0 and not all 0; got {fractions}.")
    weights = [fraction / sum(fractions) for fraction in fractions]
    total = min(len(dataset) / weight for dataset, weight in zip(datasets_list, weights, strict=True) if weight > 0)
    return [
        dataset.select(range(round(weight * total))) for dataset, weight in zip(datasets_list, weights, strict=True)
    ]


def _as_list(files) -> list[str]:
    return [files] if isinstance(files, str) else list(files)
