"""Reward functions named in a recipe: a built-in name, a reward-model folder, or `module:function`.

Every resolved function is wrapped so that a failure inside it (an exception, the wrong number of rewards, a value
that is not a finite number) is a one-line `UserError` naming it, not a traceback from inside the environment.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from dpo_plugin_envs import RewardFn
from dpo_plugin_envs.completion import checked_rewards

from ..data.assets import resolve_model
from ..evaluation.rewards import RewardModelReward
from ..utils.errors import ConfigError, UserError

# built-in name -> "module:factory", the factory called with the policy's tokenizer (imported only when named)
BUILTIN_REWARDS = {
    "gold_positive": "dpo_plugin.tasks.sentiment.gold:gold_positive_reward",
    "gold_negative": "dpo_plugin.tasks.sentiment.gold:gold_negative_reward",
    "gold_from_prompt": "dpo_plugin.tasks.sentiment.gold:gold_from_prompt_reward",
}


def resolve_rewards(specs: Sequence[str], tokenizer, batch_size: int, max_length: int | None) -> dict[str, RewardFn]:
    """Name → reward function for each recipe string of `specs`, in order."""
    if not specs:
        raise ConfigError(
            f"reward_funcs is required: built-in names ({', '.join(BUILTIN_REWARDS)}), reward-model folders, or "
            "module:function strings."
        )
    rewards: dict[str, RewardFn] = {}
    for spec in specs:
        name, fn = _resolve(spec, tokenizer, batch_size, max_length)
        name = name if name not in rewards else f"{name}_{len(rewards)}"
        rewards[name] = checked(name, fn)
    return rewards


def _resolve(spec: str, tokenizer, batch_size: int, max_length: int | None) -> tuple[str, RewardFn]:
    if spec in BUILTIN_REWARDS:
        return spec, _entry_point(BUILTIN_REWARDS[spec], spec)(tokenizer)
    folder = Path(resolve_model(spec))
    if folder.is_dir():
        return folder.name, RewardModelReward.from_pretrained(str(folder), batch_size, max_length)
    if ":" in spec:
        return spec.rpartition(":")[2], _entry_point(spec, spec)
    raise ConfigError(
        f"reward_funcs entry {spec!r} is neither a built-in reward ({', '.join(BUILTIN_REWARDS)}), a reward-model "
        "folder, nor a module:function string."
    )


def _entry_point(target: str, spec: str):
    module_name, _, attribute = target.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"reward_funcs entry {spec!r} does not resolve: {error}.") from error
    if not callable(value):
        raise ConfigError(f"reward_funcs entry {spec!r} is a {type(value).__name__}, not a function.")
    return value


def checked(name: str, fn: RewardFn) -> RewardFn:
    """`fn`, with any failure inside it, or output that is not one finite reward per completion, a `UserError` that
    names it."""

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        try:
            output = fn(prompts, completions)
        except Exception as error:  # the user's code: its failure is a one-line error naming it
            raise UserError(f"reward function {name!r} raised {type(error).__name__}: {error}") from error
        try:
            return checked_rewards(name, output, len(completions))
        except ValueError as error:
            raise UserError(str(error)) from error

    reward.__name__ = name
    return reward
