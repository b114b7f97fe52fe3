"""How a reward function is called: TRL's convention, `fn(prompts=..., completions=..., completion_ids=...,
**columns)` (as `GRPOTrainer` and `OnlineDPOTrainer` call it), or the two-positional `fn(prompts, completions)`.

The signature is read once. A function that takes `**kwargs`, or names both `prompts` and `completions`, is called
with keywords: the prompts, the completions, `completion_ids` and each extra dataset column as a list with one value
per completion, each keyword passed only if the function takes it (all of them to `**kwargs`). Any other function is
called positionally with the prompts and the completions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class RewardCall:
    """One reward function, called in the convention its signature asks for."""

    def __init__(self, name: str, fn: Callable) -> None:
        self.name, self.fn = name, fn
        self.__name__ = name  # as TRL names a reward function it is handed
        try:
            parameters = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # a builtin or C function without a signature: the positional form
            parameters = []
        self.takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters)
        self.keywords = {parameter.name for parameter in parameters if parameter.kind in NAMED}
        self.required = {
            parameter.name
            for parameter in parameters
            if parameter.kind in NAMED and parameter.default is inspect.Parameter.empty
        }
        self.by_keyword = self.takes_any or {"prompts", "completions"} <= self.keywords

    def wants(self, keyword: str) -> bool:
        """Whether a call passes `keyword` to the function."""
        return self.by_keyword and (self.takes_any or keyword in self.keywords)

    def check_available(self, available: Sequence[str]) -> None:
        """ValueError naming each keyword the function requires that the caller cannot give."""
        missing = sorted(self.required - {"prompts", "completions", *available}) if self.by_keyword else []
        if missing:
            hint = " (pass processing_class to tokenize the completions)" if "completion_ids" in missing else ""
            raise ValueError(
                f"Reward function {self.name!r} requires {missing}, which this environment cannot give{hint}; "
                f"it gives prompts, completions and {list(available)}."
            )

    def __call__(self, prompts: list[str], completions: list[str], **extras: Any) -> Any:
        if not self.by_keyword:
            return self.fn(prompts, completions)
        keywords = {"prompts": prompts, "completions": completions, **extras}
        if not self.takes_any:
            keywords = {key: value for key, value in keywords.items() if key in self.keywords}
        return self.fn(**keywords)


def reward_calls(reward_fns: Mapping[str, Callable]) -> dict[str, RewardCall]:
    """Name -> `RewardCall` of each reward function."""
    return {name: RewardCall(name, fn) for name, fn in reward_fns.items()}
