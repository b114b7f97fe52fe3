"""One entry point for preference data: a local file or folder, a built-in dataset, or a hub dataset id."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
from datasets import Dataset

from ..utils.errors import UserError, one_line
from .builtin import BUILTIN_DATASETS, load_builtin
from .file_errors import describe_unreadable, encoding_problem
from .formats import normalize_preference_dataset

# file suffix -> the `datasets` builder that reads it
LOCAL_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_prompt_dataset(name: str, split: str, config: str | None = None, **hub_options) -> Dataset:
    """The prompts of ``split`` of ``name``, found as `load_preference_dataset` finds data: a prompt-only dataset (a
    ``prompt`` column of strings or conversations, as TRL's online trainers take, with its other columns, which TRL
    passes to reward functions), or the ``prompt`` column of a preference dataset in any accepted format."""
    return load_preference_dataset(name, split, config, normalize=prompts_only, **hub_options)


def prompts_only(dataset: Dataset) -> Dataset:
    """A prompt-only dataset as it is, or the ``prompt`` column of a preference dataset (``ValueError`` naming the
    formats if neither)."""
    if "prompt" in dataset.column_names and not {"chosen", "rejected"} & set(dataset.column_names):
        if len(dataset) == 0:
            raise UserError("The prompt-only dataset has no rows.")
        return dataset
    return normalize_preference_dataset(dataset).select_columns(["prompt"])


def load_preference_dataset(
    name: str, split: str, config: str | None = None, normalize=normalize_preference_dataset, **hub_options
) -> Dataset:
    """Load ``split`` of ``name`` and normalise it to TRL's explicit-prompt preference format (or with `normalize`).

    ``name`` is tried, in order, as:
    (a) a local .json/.jsonl/.csv/.parquet file (its only split is ``"train"``) or a folder of such files,
        where split ``s`` is read from the files named ``s.*`` or ``s-*``/``s_*`` (``train.jsonl``,
        ``test-00000-of-00001.parquet``);
    (b) a built-in dataset (``BUILTIN_DATASETS``, splits ``"train"`` and ``"test"``);
    (c) a Hugging Face Hub dataset id, read with ``datasets.load_dataset(name, config, split=split)``.
    ``config`` names a hub dataset's configuration and is refused for local and built-in data; ``hub_options``
    (``data_dir``, ``data_files``) go to ``datasets.load_dataset`` for a hub id.
    """
    path = Path(name).expanduser()
    label = f"{name} ({split!r} split)"
    if path.exists() or name in BUILTIN_DATASETS:
        if config is not None:
            raise UserError(f"config={config!r} applies only to hub datasets, not to the local or built-in {name!r}.")
        if not path.exists():
            return _normalized(load_builtin(name, split), label, normalize)
        if path.is_file() and split != "train":
            raise UserError(
                f"{path} is a single file, so its only split is 'train', not {split!r}. To give it a {split!r} "
                f"split, put it in a folder as {split}{path.suffix} beside train{path.suffix}."
            )
        return load_preference_files([path] if path.is_file() else _split_files(path, split), label, normalize)
    if path.suffix in LOCAL_FILE_BUILDERS:
        raise FileNotFoundError(f"No such data file: {path}. Check the path (relative paths start at {Path.cwd()}).")
    return _normalized(load_hub_dataset(name, split, config, **hub_options), label, normalize)


def load_preference_files(files: list[Path], label: str, normalize=normalize_preference_dataset) -> Dataset:
    """Local .json/.jsonl/.csv/.parquet files of one kind read as one dataset and normalised; a file that does not
    read says which file, which line and what was expected (`file_errors`). `label` names the data in errors."""
    builders = {LOCAL_FILE_BUILDERS.get(file.suffix) for file in files}
    if len(builders) != 1 or None in builders:
        raise UserError(
            f"Cannot read {[str(file) for file in files]} as one dataset: use files of one kind, "
            f"with a suffix among {sorted(LOCAL_FILE_BUILDERS)}."
        )
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"No such data file: {file} (relative paths start at {Path.cwd()}).")
        if problem := encoding_problem(file):
            raise UserError(f"Cannot read {label}: {problem}.")
    try:
        raw = datasets.load_dataset(builders.pop(), data_files=[str(file) for file in files], split="train")
    except Exception as error:  # `datasets` raises StopIteration, DatasetGenerationError, UnicodeDecodeError, ...
        problems = [problem for file in files if (problem := describe_unreadable(file))]
        cause = problems[0] if problems else f"{type(error).__name__}: {one_line(error)}"
        raise UserError(f"Cannot read {label}: {cause}.") from error
    return _normalized(raw, label, normalize, files)


def _normalized(raw: Dataset, label: str, normalize, files: list[Path] = ()) -> Dataset:
    """`normalize(raw)`, its error naming `label` (and what is wrong in `files`, if anything)."""
    try:
        return normalize(raw)
    except ValueError as error:
        problems = [problem for file in files if (problem := describe_unreadable(file))]
        raise UserError(f"{label}: {problems[0] if problems else error}") from error


def _split_files(folder: Path, split: str) -> list[Path]:
    """The data files of ``folder`` that hold ``split``: ``split.*``, ``split-*.*`` or ``split_*.*``."""
    data_files = sorted(file for file in folder.iterdir() if file.suffix in LOCAL_FILE_BUILDERS)
    pattern = re.compile(rf"{re.escape(split)}([-_.].*)?")
    matching = [file for file in data_files if pattern.fullmatch(file.stem)]
    if not matching:
        raise UserError(
            f"No {split!r} data in folder {folder}: expected files named {split}.jsonl, {split}.json, "
            f"{split}.csv or {split}.parquet (or {split}-*.*); found {[file.name for file in data_files]}."
        )
    return matching


def load_hub_dataset(name: str, split: str, config: str | None = None, **kwargs) -> Dataset:
    """`datasets.load_dataset(name, config, split=split, **kwargs)`, its many error types as one `ValueError`."""
    try:
        return datasets.load_dataset(name, config, split=split, **kwargs)
    except Exception as error:  # the hub client raises many types (network, auth, missing config or split)
        raise UserError(
            f"{name!r} is not a local file or folder nor a built-in dataset ({sorted(BUILTIN_DATASETS)}), so it was "
            f"loaded as a Hugging Face Hub dataset id (config={config!r}, split={split!r}), which failed: {error}. "
            f"Check the path, pick a built-in, or use a .json/.jsonl/.csv/.parquet file or a folder of them."
        ) from error


def first_rows(dataset, n: int | None):
    """The first `n` rows of `dataset` (all of them when `n` is None or larger)."""
    return dataset if n is None else dataset.select(range(min(n, len(dataset))))
