"""The rows the environments serve: validated string columns of a dataset, and the order episodes visit them in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ORDERS = ("sequential", "random")

CHAT_HINT = (
    'Conversational rows (lists of {"role", "content"} messages) must be rendered to text first, e.g. with '
    "tokenizer.apply_chat_template(messages, tokenize=False) or trl.apply_chat_template."
)


class DatasetRows:
    """String columns of a `datasets.Dataset` or a sequence of mappings, read once into Python lists.

    Raises ValueError for an empty dataset or a missing column, TypeError for a value that is not a `str`.
    `ids[i]` is row i's `id` column as a string when the dataset has one, else `str(i)`. With `keep_other_columns`,
    `other_columns` holds every other column (any values, `id` included) as it is; otherwise it is empty.
    """

    def __init__(self, dataset: Any, columns: Sequence[str], keep_other_columns: bool = False) -> None:
        self.columns: dict[str, list[str]] = {}
        names = _column_names(dataset)
        if len(dataset) == 0:
            raise ValueError("The dataset is empty: it needs at least one row.")
        missing = [column for column in columns if column not in names]
        if missing:
            raise ValueError(f"The dataset has no column(s) {missing}; columns found: {names}.")
        for column in columns:
            values = _read_column(dataset, column, names)
            for index, value in enumerate(values):
                if not isinstance(value, str):
                    raise TypeError(
                        f"Row {index}, column {column!r}: expected a string, found {type(value).__name__}. {CHAT_HINT}"
                    )
            self.columns[column] = values
        others = [name for name in names if name not in columns] if keep_other_columns else []
        self.other_columns: dict[str, list[Any]] = {name: _read_column(dataset, name, names) for name in others}
        ids = _read_column(dataset, "id", names) if "id" in names else range(len(dataset))
        self.ids: list[str] = [str(value) for value in ids]

    def __len__(self) -> int:
        return len(self.ids)

    def length_bound(self, max_length: int | None, argument: str) -> int:
        """`max_length` after checking that every text fits (ValueError naming the first that does not), or, when
        None, the length of the longest text."""
        if max_length is None:
            return max(len(text) for values in self.columns.values() for text in values)
        for column, values in self.columns.items():
            for index, text in enumerate(values):
                if len(text) > max_length:
                    raise ValueError(
                        f"Row {index}, column {column!r} has {len(text)} characters, more than "
                        f"{argument}={max_length}: raise {argument} or shorten the text."
                    )
        return max_length


def _column_names(dataset: Any) -> list[str]:
    """Column names of a `datasets.Dataset` (`column_names`) or of the first row of a sequence of mappings."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, Mapping):
        raise TypeError(f"Got a dataset with splits {list(names)}: pass one split, e.g. dataset['test'].")
    if names is not None:
        return list(names)
    if not isinstance(dataset, Sequence) or isinstance(dataset, str):
        raise TypeError(f"Expected a datasets.Dataset or a sequence of mappings (rows), got {type(dataset).__name__}.")
    for index, row in enumerate(dataset):
        if not isinstance(row, Mapping):
            raise TypeError(f"Row {index} is a {type(row).__name__}, expected a mapping from column names to values.")
    return list(dataset[0]) if len(dataset) else []


def _read_column(dataset: Any, column: str, names: list[str]) -> list[Any]:
    if hasattr(dataset, "column_names"):
        return list(dataset[column])
    values = []
    for index, row in enumerate(dataset):
        if column not in row:
            raise ValueError(f"Row {index} has no column {column!r}; columns found in row 0: {names}.")
        values.append(row[column])
    return values


class RowWalk:
    """Which row each new episode serves: `order="sequential"` walks 0, 1, ..., n-1 and wraps around;
    `order="random"` draws a row uniformly from `np_random`. An explicit `index` serves that row, and a
    sequential walk continues after it."""

    def __init__(self, num_rows: int, order: str) -> None:
        if order not in ORDERS:
            raise ValueError(f"order={order!r} is not one of {list(ORDERS)}.")
        self.num_rows, self.order = num_rows, order
        self._next = 0

    def restart(self) -> None:
        """Start the sequential walk over, at row 0."""
        self._next = 0

    def next_row(self, np_random: np.random.Generator, index: Any = None) -> int:
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_rows:
                raise ValueError(f"options['index'] must be a row index in [0, {self.num_rows}), got {index!r}.")
            row = int(index)
        elif self.order == "random":
            return int(np_random.integers(self.num_rows))
        else:
            row = self._next
        self._next = (row + 1) % self.num_rows
        return row
