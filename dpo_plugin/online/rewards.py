"""Reward functions named in a recipe: a built-in name, a reward-model folder, or `module:function`.

Every resolved function is wrapped so that a failure inside it (an exception, the wrong number of rewards, a value
that is not a finite number) is a one-line `UserError` naming it, not a traceback from inside the environment.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from dpo_plugin_envs import RewardFn
from dpo_plugin_envs.completion import checked_rewards, reward_components
from dpo_plugin_envs.reward_calls import RewardCall

from ..data.assets import resolve_model
from ..data.model_folders import HUB_ID
from ..evaluation.rewards import RewardModelReward
from ..trl_private import get_config_model_id
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


def trl_reward_functions(
    reward_funcs, reward_processing_classes, tokenizer, batch_size: int, max_length: int | None
) -> dict[str, RewardFn]:
    """Name → reward function for `OnlineDPOTrainer`'s `reward_funcs`: a callable, a reward model (a
    sequence-classification `nn.Module` with one output, scored on prompt + completion with its entry of
    `reward_processing_classes`, default its own tokenizer), a string (as a recipe's entry; a `namespace/name` hub id
    is a reward model, as in TRL), a list of these, or a `{name: callable}` mapping. A list's entries are named by
    `__name__` (a model by its id), a repeated name numbered."""
    if reward_funcs is None:
        raise ConfigError("reward_funcs is required: a reward function, a reward model, or a list of them.")
    if isinstance(reward_funcs, Mapping):
        return reward_components(reward_funcs)
    entries = reward_funcs if isinstance(reward_funcs, list | tuple) else [reward_funcs]
    classes = reward_processing_classes
    classes = [None] * len(entries) if classes is None else classes if isinstance(classes, list | tuple) else [classes]
    if len(classes) != len(entries):
        raise ConfigError(
            f"reward_processing_classes has {len(classes)} entries for {len(entries)} reward functions: give one each "
            "(None for a function)."
        )
    rewards: dict[str, RewardFn] = {}
    for entry, processing_class in zip(entries, classes, strict=True):
        if isinstance(entry, str):
            name, fn = _resolve(entry, tokenizer, batch_size, max_length)
        elif isinstance(entry, torch.nn.Module):
            name = get_config_model_id(entry.config).split("/")[-1]
            fn = _reward_model(entry, processing_class, batch_size, max_length)
        else:
            name, fn = next(iter(reward_components(entry).items()))
        rewards[name if name not in rewards else f"{name}_{len(rewards)}"] = fn
    return rewards


def with_trainer_state(rewards: Mapping[str, RewardFn], state) -> dict[str, RewardFn]:
    """`rewards`, each function that takes `trainer_state` (or `**kwargs`) given `state` with every call, as TRL gives
    its reward functions the trainer's state (for rewards shaped by the step)."""
    return {
        name: functools.partial(fn, trainer_state=state) if RewardCall(name, fn).wants("trainer_state") else fn
        for name, fn in rewards.items()
    }


def _reward_model(model: torch.nn.Module, tokenizer, batch_size: int, max_length: int | None) -> RewardModelReward:
    """A reward-model object as TRL prepares it: in eval mode, its tokenizer loaded from its own id when not given,
    padding with EOS when it has no pad token."""
    from transformers import AutoTokenizer

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return RewardModelReward(model.eval(), tokenizer, batch_size, max_length)


def _resolve(spec: str, tokenizer, batch_size: int, max_length: int | None) -> tuple[str, RewardFn]:
    if spec in BUILTIN_REWARDS:
        return spec, _entry_point(BUILTIN_REWARDS[spec], spec)(tokenizer)
    folder = Path(resolve_model(spec))
    if folder.is_dir():
        return folder.name, RewardModelReward.from_pretrained(str(folder), batch_size, max_length)
    if ":" in spec:
        return spec.rpartition(":")[2], _entry_point(spec, spec)
    if "/" in spec and HUB_ID.fullmatch(spec):
        return spec.split("/")[-1], RewardModelReward.from_pretrained(spec, batch_size, max_length)
    raise ConfigError(
        f"reward_funcs entry {spec!r} is neither a built-in reward ({', '.join(BUILTIN_REWARDS)}), a reward-model "
        "folder or hub id, nor a module:function string."
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
    """`fn`, called in its own convention (TRL's keywords or two positional arguments), with any failure inside it,
    or output that is not one finite reward per completion, a `UserError` that names it."""
    call = RewardCall(name, fn)

    def reward(prompts: list[str], completions: list[str], **extras) -> list[float]:
        try:
            output = call(prompts, completions, **extras)
        except Exception as error:  # the user's code: its failure is a one-line error naming it
            raise UserError(f"reward function {name!r} raised {type(error).__name__}: {error}") from error
        try:
            return checked_rewards(name, output, len(completions))
        except ValueError as error:
            raise UserError(str(error)) from error

    reward.__name__ = name
    return reward
