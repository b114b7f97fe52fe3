"""Completion-v0: write a completion for a prompt; the reward is a weighted sum of reward functions' scores."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .one_step import Episode, OneStepEnv, OneStepTask, OneStepVectorEnv
from .reward_calls import reward_calls
from .source import DatasetRows
from .spaces import UnicodeText

# `fn(prompts=..., completions=..., completion_ids=..., **columns)` (TRL's convention) or `fn(prompts, completions)`
RewardFn = Callable[..., Sequence[float]]


def reward_components(reward_fn: RewardFn | Mapping[str, RewardFn]) -> dict[str, RewardFn]:
    """Name -> reward function; a single callable is named by its `__name__` (lambdas: "reward")."""
    if callable(reward_fn):
        name = getattr(reward_fn, "__name__", None)
        return {"reward" if name in (None, "<lambda>") else name: reward_fn}
    if not isinstance(reward_fn, Mapping) or not reward_fn:
        raise TypeError(f"reward_fn must be a callable or a non-empty mapping from names to callables: {reward_fn!r}.")
    for name, fn in reward_fn.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(f"reward_fn maps names (str) to callables; got {name!r}: {fn!r}.")
    return dict(reward_fn)


def component_weights(names: Sequence[str], reward_weights: Mapping[str, float] | None) -> dict[str, float]:
    """Name -> weight, 1.0 for each component `reward_weights` does not mention."""
    reward_weights = dict(reward_weights or {})
    unknown = sorted(set(reward_weights) - set(names))
    if unknown:
        raise ValueError(f"reward_weights names unknown reward component(s) {unknown}; the components: {list(names)}.")
    for name, weight in reward_weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.number)) or not math.isfinite(weight):
            raise ValueError(f"reward_weights[{name!r}] must be a finite number, got {weight!r}.")
    return {name: float(reward_weights.get(name, 1.0)) for name in names}


def checked_rewards(name: str, output: Any, count: int) -> list[float]:
    """`output` of reward function `name` as `count` finite floats; ValueError saying what is wrong otherwise."""
    if isinstance(output, (str, bytes)) or not hasattr(output, "__len__"):
        raise ValueError(f"Reward function {name!r} returned {output!r}, expected a sequence of {count} floats.")
    if len(output) != count:
        raise ValueError(
            f"Reward function {name!r} returned {len(output)} rewards, expected {count} (one per completion)."
        )
    rewards = []
    for index, value in enumerate(output):
        try:
            reward = math.nan if isinstance(value, (str, bytes)) else float(value)
        except (TypeError, ValueError):
            reward = math.nan
        if not math.isfinite(reward):
            raise ValueError(f"Reward function {name!r} returned {value!r} at index {index}: expected a finite number.")
        rewards.append(reward)
    return rewards


class CompletionTask(OneStepTask):
    """Episodes over prompt rows, scored by weighted reward functions called once per batch of completions, with
    the rows' other columns and (given `processing_class`) the completions' token ids as TRL passes them."""

    kind = "prompt"
    action_type = str

    def __init__(
        self,
        dataset: Any,
        reward_fn: RewardFn | Mapping[str, RewardFn],
        order: str,
        reward_weights: Mapping[str, float] | None,
        max_prompt_length: int | None,
        max_completion_length: int,
        processing_class: Any = None,
    ) -> None:
        self.reward_fns = reward_calls(reward_components(reward_fn))
        self.weights = component_weights(list(self.reward_fns), reward_weights)
        super().__init__(DatasetRows(dataset, ("prompt",), keep_other_columns=True), order)
        self.processing_class = processing_class
        available = [*self.rows.other_columns, *(["completion_ids"] if processing_class is not None else [])]
        for call in self.reward_fns.values():
            call.check_available(available)
        self.observation_space = UnicodeText(self.rows.length_bound(max_prompt_length, "max_prompt_length"))
        self.action_space = UnicodeText(max_completion_length)
        self.action_help = f"pass the completion, a str of at most max_completion_length={max_completion_length} chars."

    def episode(self, row: int, np_random: np.random.Generator) -> Episode:
        return Episode(row, self.rows.columns["prompt"][row])

    def score(self, episodes: Sequence[Episode], actions: Sequence[str]) -> tuple[list[float], list[dict[str, Any]]]:
        prompts, completions = [episode.observation for episode in episodes], list(actions)
        rows = [episode.row for episode in episodes]
        extras = {name: [values[row] for row in rows] for name, values in self.rows.other_columns.items()}
        if self.processing_class is not None and any(call.wants("completion_ids") for call in self.reward_fns.values()):
            extras["completion_ids"] = self.processing_class(completions, add_special_tokens=False)["input_ids"]
        scores = {
            name: checked_rewards(name, call(prompts, completions, **extras), len(actions))
            for name, call in self.reward_fns.items()
        }
        components = [{name: values[i] for name, values in scores.items()} for i in range(len(episodes))]
        rewards = [sum(self.weights[name] * value for name, value in parts.items()) for parts in components]
        infos = [{**self.info(episode), "reward_components": components[i]} for i, episode in enumerate(episodes)]
        return rewards, infos

    def render(self, episode: Episode, outcome: tuple[str, float, dict[str, Any]] | None) -> str:
        lines = [f"Prompt {self.rows.ids[episode.row]} (row {episode.row}):", episode.observation]
        if outcome is not None:
            completion, reward, info = outcome
            parts = ", ".join(f"{name} {value:g}" for name, value in info["reward_components"].items())
            lines += ["Completion:", completion, f"Reward: {reward:g} ({parts})"]
        return "\n".join(lines)


class CompletionEnv(OneStepEnv):
    """Write a completion for a prompt, scored by reward functions, one prompt per episode.

    ## Description

    Each episode serves one prompt of a dataset; the agent answers with the completion text, and reward functions
    (a reward model, a classifier, any callable) score it. Walked in order over held-out prompts, the mean return
    is the mean reward of the agent's completions.

    ## Action Space

    `UnicodeText(max_completion_length)`: the completion, any `str` of at most that many characters.

    ## Observation Space

    `UnicodeText(L)`: the prompt, L = `max_prompt_length` or the longest prompt in the dataset.

    ## Rewards

    Σ_k w_k · r_k over the reward components k: `r_k = reward_fn_k(prompts=..., completions=..., ...)[i]`, each
    component called once per step with all of that step's prompts and completions (here lists of one), `w_k` from
    `reward_weights` (default 1.0). Step info holds the unweighted `"reward_components"` ({name: float}).
    Reward functions are called as TRL calls them (`reward_calls.py`): by keyword, with `completion_ids` (the
    completions tokenized by `processing_class`, without special tokens) and each other column of the dataset as a
    list, whichever the function takes; a function that names neither `prompts` and `completions` nor `**kwargs`
    is called positionally, `reward_fn(prompts, completions)`.

    ## Starting State

    The next row of the walk: rows 0, 1, ..., n-1, then 0 again (`order="sequential"`), or a uniformly drawn
    row (`order="random"`). `reset(options={"index": i})` serves row i; `reset(seed=s)` restarts the walk.
    Reset info: `{"prompt_id": str, "prompt_index": int}` (the row's `id` column, else its index).

    ## Episode End

    After one step: `terminated=True`, `truncated=False`; the observation is returned again. Stepping again
    without a reset raises `ResetNeeded`.

    ## Arguments

    - `dataset`: a `datasets.Dataset` or a sequence of mappings with a string column `prompt` (conversational
      rows must be rendered to text first), optionally `id`, and any other columns (passed to reward functions).
    - `reward_fn`: `reward_fn(prompts, completions, completion_ids, **kwargs) -> Sequence[float]` (TRL's form) or
      `reward_fn(prompts, completions)`, or a mapping of component names to such functions. A single function's
      component is named by its `__name__`, or "reward".
    - `order`: `"sequential"` (default) or `"random"`.
    - `reward_weights`: component name -> weight; unnamed components weigh 1.0.
    - `max_prompt_length`: the bound L of the observation space; None for the longest prompt.
    - `max_completion_length`: the longest completion the action space holds (default 4096 characters).
    - `processing_class`: a tokenizer; with it, reward functions that take `completion_ids` get them.
    - `render_mode`: None or `"ansi"` (the prompt and, after the step, the completion and its reward).

    ## Example

    >>> import gymnasium as gym
    >>> import dpo_plugin_envs
    >>> prompts = [{"prompt": "Say hello."}, {"prompt": "Name a colour."}]
    >>> def words(prompts, completions):  # a reward function: each completion's number of words
    ...     return [float(len(completion.split())) for completion in completions]
    >>> env = gym.make("dpo_plugin/Completion-v0", dataset=prompts, reward_fn=words, max_completion_length=64)
    >>> env
    <OrderEnforcing<PassiveEnvChecker<CompletionEnv<dpo_plugin/Completion-v0>>>>
    >>> env.action_space
    UnicodeText(max_length=64, min_length=0)
    >>> env.reset(seed=0)
    ('Say hello.', {'prompt_id': '0', 'prompt_index': 0})
    >>> observation, reward, terminated, truncated, info = env.step("Hello there, friend!")
    >>> reward, terminated, truncated, info["reward_components"]
    (3.0, True, False, {'words': 3.0})

    ## Version History

    * v0: Initial version, registered as `dpo_plugin/Completion-v0` (vector entry point `CompletionVectorEnv`):
      one-step episodes over prompt rows, the completion `str` as the action, the reward a weighted sum of reward
      functions' scores, rows in sequential or random order. Later gained TRL's calling convention for reward
      functions (keywords, `completion_ids` with `processing_class`, extra columns); two-positional functions are
      called as before.
    """

    def __init__(
        self,
        dataset: Any,
        reward_fn: RewardFn | Mapping[str, RewardFn],
        order: str = "sequential",
        reward_weights: Mapping[str, float] | None = None,
        max_prompt_length: int | None = None,
        max_completion_length: int = 4096,
        render_mode: str | None = None,
        processing_class: Any = None,
    ) -> None:
        task = CompletionTask(
            dataset, reward_fn, order, reward_weights, max_prompt_length, max_completion_length, processing_class
        )
        super().__init__(task, render_mode)


class CompletionVectorEnv(OneStepVectorEnv):
    """`num_envs` `CompletionEnv` episodes per step, from one walk over the dataset.

    `actions` is a sequence (tuple, list or object array) of `num_envs` completions; each reward function is called
    once per step with all `num_envs` prompts and completions. Autoreset is `SAME_STEP`: a step scores the current
    prompts and returns the next ones; infos hold the new episodes' reset infos and, under "final_obs" and
    "final_info", the scored episodes' observations and step infos. Arguments as `CompletionEnv`, and
    `group_size` K (default 1): each block of K consecutive sub-envs serves the same prompt row (`num_envs` a
    multiple of K), so one step gives K completions of each of `num_envs / K` prompts, every sub-env's reset info
    holding its row's `prompt_id`: groups to rank, as on-policy DPO samples them.

    ## Example

    >>> import gymnasium as gym
    >>> import dpo_plugin_envs
    >>> prompts = [{"prompt": "Say hello."}, {"prompt": "Name a colour."}]
    >>> def words(prompts, completions):  # called once per step, with both sub-envs' completions
    ...     return [float(len(completion.split())) for completion in completions]
    >>> envs = gym.make_vec(
    ...     "dpo_plugin/Completion-v0", num_envs=2, vectorization_mode="vector_entry_point", dataset=prompts,
    ...     reward_fn=words,
    ... )
    >>> envs
    CompletionVectorEnv(dpo_plugin/Completion-v0, num_envs=2)
    >>> observations, infos = envs.reset(seed=0)
    >>> observations
    ('Say hello.', 'Name a colour.')
    >>> observations, rewards, terminations, truncations, infos = envs.step(("Hello!", "Deep blue."))
    >>> rewards.tolist(), infos["final_info"]["reward_components"]["words"].tolist()
    ([1.0, 2.0], [1.0, 2.0])
    >>> groups = gym.make_vec(
    ...     "dpo_plugin/Completion-v0", num_envs=4, vectorization_mode="vector_entry_point", dataset=prompts,
    ...     reward_fn=words, group_size=2,
    ... )
    >>> observations, infos = groups.reset(seed=0)
    >>> observations, infos["prompt_id"].tolist()
    (('Say hello.', 'Say hello.', 'Name a colour.', 'Name a colour.'), ['0', '0', '1', '1'])

    ## Version History

    * v0: Initial version, the native vector env of `dpo_plugin/Completion-v0`
      (`gymnasium.make_vec(..., vectorization_mode="vector_entry_point")`): one shared walk over the rows, each
      reward function called once per step with all `num_envs` completions, `SAME_STEP` autoreset. Later gained
      `group_size` (default 1, the behaviour before it): blocks of sub-envs that share a prompt row.
    """

    def __init__(
        self,
        num_envs: int,
        dataset: Any,
        reward_fn: RewardFn | Mapping[str, RewardFn],
        order: str = "sequential",
        reward_weights: Mapping[str, float] | None = None,
        max_prompt_length: int | None = None,
        max_completion_length: int = 4096,
        group_size: int = 1,
        processing_class: Any = None,
    ) -> None:
        task = CompletionTask(
            dataset, reward_fn, order, reward_weights, max_prompt_length, max_completion_length, processing_class
        )
        super().__init__(num_envs, task, group_size)
