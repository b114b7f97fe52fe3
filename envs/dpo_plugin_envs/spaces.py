"""`UnicodeText`: a gymnasium `Text` space whose members are any strings, not only strings over a small charset."""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from gymnasium.spaces import Text

PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "


class UnicodeText(Text):
    """Any `str` of `min_length` to `max_length` characters, whatever the characters.

    gymnasium's `Text` must enumerate its charset, so it cannot hold real text (accents, emoji, CJK, newlines).
    Here membership only checks the type and the length; `sample()` draws from `sample_charset`, so agents and
    `check_env` can still sample. Not flattenable: characters outside `sample_charset` have no index.
    """

    def __init__(
        self,
        max_length: int,
        *,
        min_length: int = 0,
        sample_charset: str = PRINTABLE,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(max_length, min_length=min_length, charset=sample_charset, seed=seed)

    def contains(self, x: Any) -> bool:
        """Whether `x` is a `str` of `min_length` to `max_length` characters."""
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    @property
    def is_np_flattenable(self) -> bool:
        """False: `flatten` indexes characters in `sample_charset`, which real text does not stay within."""
        return False

    def __repr__(self) -> str:
        sample = "" if self.character_list == tuple(PRINTABLE) else f", sample_charset={''.join(self.character_list)!r}"
        return f"UnicodeText(max_length={self.max_length}, min_length={self.min_length}{sample})"

    def __eq__(self, other: object, /) -> bool:
        return (
            type(other) is type(self)
            and self.min_length == other.min_length
            and self.max_length == other.max_length
            and self.character_list == other.character_list
        )
