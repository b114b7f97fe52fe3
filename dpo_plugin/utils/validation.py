"""One validation style for every config dataclass: required keys, then a table of rules, checked in `__post_init__`.

A rule is a test and the valid values as the error states them; a value that fails is one `ConfigError` naming the
key, what it may be and what it got. An unset value (None) passes a rule: keys that must be set are `required`.
After the rules, `check` reads every field's value against the type its dataclass annotates (numbers, integers,
booleans, strings, lists of them, `| None` for what may be unset), so a list, a mapping or `null`
where a number goes is one error too, whatever the key; a field of any other type is left to its rule.

    RULES = {"batch_size": integer_at_least(1), "temperature": number_above(0.0, "(sampling)")}

    def __post_init__(self):
        required(self, "model_name_or_path", hint="see recipes/eval.yaml")
        check(self, RULES)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
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


def check(config: Any, rules: Mapping[str, Rule], types: bool = True) -> None:
    """`ConfigError` for the first key of `rules` whose value is set and fails its rule, then (unless `types` is
    False: a subclass whose parent's `__post_init__` checks the same object again, once its values are normalized)
    for the first field whose value is not of its annotated type (`typed_fields`)."""
    for name, rule in rules.items():
        value = getattr(config, name)
        if value is not None and not rule.test(value):
            raise ConfigError(rule.error(name, value))
    if not types:
        return
    for name, rule in typed_fields(type(config)).items():
        value = getattr(config, name)
        if not rule.test(value):
            raise ConfigError(rule.error(name, value))


def check_fields(values: Mapping[str, Any], cls: type, where: str) -> None:
    """`ConfigError` naming `where` and the key, for the first of `values` (a mapping read from a file, before
    dataclass `cls` is built from it) whose value is not of its field's annotated type (`typed_fields`)."""
    rules = typed_fields(cls)
    for name, value in values.items():
        if name in rules and not rules[name].test(value):
            raise ConfigError(f"{where}: {rules[name].error(name, value)}")


@functools.cache
def typed_fields(cls: type) -> dict[str, Rule]:
    """Field name → the rule its annotation gives, for each field of dataclass `cls` whose type `type_rule` reads."""
    hints = typing.get_type_hints(cls)
    rules = {field.name: type_rule(hints.get(field.name)) for field in dataclasses.fields(cls)}
    return {name: rule for name, rule in rules.items() if rule is not None}


def type_rule(hint: Any) -> Rule | None:
    """The rule a type annotation states: `float` a number, `int` an integer, `bool` true or false, `str` a string,
    `list[X]` a list of X, a union any of its members (`None` for unset); None for any other type (mappings
    included: transformers turns some into objects of its own, which its own checks read)."""
    simple = {
        float: Rule(lambda value: isinstance(value, (int, float)) and not isinstance(value, bool), "be a number"),
        int: Rule(_integer, "be an integer"),
        bool: Rule(lambda value: isinstance(value, bool), "be true or false"),
        str: Rule(lambda value: isinstance(value, str), "be a string"),
    }
    origin = typing.get_origin(hint)
    if hint in simple:
        return simple[hint]
    if origin is list:
        item = type_rule(typing.get_args(hint)[0])
        if item is None:
            return None
        return Rule(
            lambda value: isinstance(value, list) and all(item.test(v) for v in value),
            f"be a list whose values each {item.valid.removeprefix('be ')}",
        )
    if origin in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(hint) if member is not type(None)]
        rules = [type_rule(member) for member in members]
        if any(rule is None for rule in rules):
            return None
        optional = type(None) in typing.get_args(hint)
        words = " or ".join(rule.valid.removeprefix("be ") for rule in rules)
        return Rule(
            lambda value: (optional and value is None) or any(rule.test(value) for rule in rules),
            f"be {words}" + (" (or unset)" if optional else ""),
        )
    return None


def required(config: Any, *names: str, hint: str) -> None:
    """`ConfigError` for the first of `names` that is unset or empty, with `hint` saying where an example is."""
    for name in names:
        if getattr(config, name) in (None, "", [], ()):
            raise ConfigError(f"{name} is required ({hint}).")
