"""One validation style for every config dataclass: required keys, then a table of rules, checked in `__post_init__`.

A rule is a test and the valid values as the error states them; a value that fails is one `ConfigError` naming the
key, what it may be and what it got. An unset value (None) passes a rule: keys that must be set are `required`.

    RULES = {"batch_size": integer_at_least(1), "temperature": number_above(0.0, "(sampling)")}

    def __post_init__(self):
        required(self, "model_name_or_path", hint="see recipes/eval.yaml")
        check(self, RULES)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """`test(value)` says whether a value is valid; `valid` completes "<key> must …" in the error."""

    test: Callable[[Any], bool]
    valid: str

    def error(self, name: str, value: Any) -> str:
        return f"{name} must {self.valid}; got {value!r}."


@dataclass(frozen=True)
class Choice(Rule):
    """A value from a fixed list; the error lists them."""

    def error(self, name: str, value: Any) -> str:
        return f"{name} {value!r} is not known. Valid values: {self.valid}."


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _noted(text: str, note: str) -> str:
    return f"{text} {note}" if note else text


def integer_at_least(bound: int, note: str = "") -> Rule:
    return Rule(lambda value: _integer(value) and value >= bound, _noted(f"be an integer >= {bound}", note))


def number_at_least(bound: float, note: str = "") -> Rule:
    return Rule(lambda value: _number(value) and value >= bound, _noted(f"be a finite number >= {bound:g}", note))


def number_above(bound: float, note: str = "") -> Rule:
    return Rule(lambda value: _number(value) and value > bound, _noted(f"be > {bound:g}", note))


def number_in(low: float, high: float, note: str = "", *, closed_low: bool = True, closed_high: bool = True) -> Rule:
    """low ≤ value ≤ high, each bound open where asked: the error writes the interval, [0, 0.5) say."""
    interval = f"{'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"

    def test(value: Any) -> bool:
        if not _number(value):
            return False
        above = value >= low if closed_low else value > low
        below = value <= high if closed_high else value < high
        return above and below

    return Rule(test, _noted(f"lie in {interval}", note))


def one_of(choices: Sequence[str]) -> Choice:
    return Choice(lambda value: value in choices, ", ".join(choices))


def some_of(choices: Sequence[str]) -> Rule:
    """A non-empty list of values from `choices`."""
    return Rule(
        lambda values: bool(values) and all(value in choices for value in values),
        f"be a non-empty list of {', '.join(choices)}",
    )


def each(rule: Rule, *, empty_ok: bool = False) -> Rule:
    """A list (non-empty unless `empty_ok`) whose every value passes `rule`."""
    return Rule(
        lambda values: (empty_ok or bool(values)) and all(rule.test(value) for value in values),
        f"be a {'' if empty_ok else 'non-empty '}list; each value must {rule.valid}",
    )


def check(config: Any, rules: Mapping[str, Rule]) -> None:
    """`ConfigError` for the first key of `rules` whose value is set and fails its rule."""
    for name, rule in rules.items():
        value = getattr(config, name)
        if value is not None and not rule.test(value):
            raise ConfigError(rule.error(name, value))


def required(config: Any, *names: str, hint: str) -> None:
    """`ConfigError` for the first of `names` that is unset or empty, with `hint` saying where an example is."""
    for name in names:
        if getattr(config, name) in (None, "", [], ()):
            raise ConfigError(f"{name} is required ({hint}).")
