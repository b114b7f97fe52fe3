"""One-step episodes over dataset rows, served one at a time (`OneStepEnv`) or `num_envs` at a time from one shared
walk (`OneStepVectorEnv`, a native vector env with same-step autoreset, optionally in groups of sub-envs that share
an episode).

A `OneStepTask` says what an episode shows and what an action is worth; both envs only sequence it. Per episode
the draws from `np_random` come in a fixed order (the row when the order is random, then the task's own draws), so a
vector env serving sub-envs 0..N-1 and a single env serving the same episodes one after another, seeded alike,
serve identical episodes.
"""

from __future__ import annotations

import copy
import reprlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from .source import DatasetRows, RowWalk

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80


@dataclass(frozen=True)
class Episode:
    """One episode: the dataset `row`, the `observation` shown, and the `answer` the task scores with (hidden)."""

    row: int
    observation: Any
    answer: Any = None

    def observe(self) -> Any:
        """A fresh copy of the observation (users may keep and modify what an env returns)."""
        return copy.deepcopy(self.observation)


class OneStepTask(ABC):
    """What the episodes over `rows` are: spaces, how a row becomes an episode, how actions are scored.

    Subclasses set `kind` (reset info holds `{kind}_id` and `{kind}_index`), `action_type` (what a valid action is
    converted to), `action_help` (the end of an InvalidAction message), `observation_space` and `action_space`.
    """

    kind: str
    action_type: type
    action_help: str
    observation_space: gym.Space
    action_space: gym.Space

    def __init__(self, rows: DatasetRows, order: str) -> None:
        self.rows = rows
        self.walk = RowWalk(len(rows), order)

    def start(self, np_random: np.random.Generator, index: int | None = None) -> Episode:
        """The next episode of the walk (or the one on row `index`)."""
        return self.episode(self.walk.next_row(np_random, index), np_random)

    def restart(self, np_random: np.random.Generator, count: int, seeded: bool, options: dict | None) -> list[Episode]:
        """The `count` episodes a reset starts: after a new seed the walk restarts at row 0, and
        `options={"index": i}` (the only option) serves row i first."""
        options = options or {}
        unknown = sorted(set(options) - {"index"})
        if unknown:
            raise ValueError(f"Unknown reset option(s) {unknown}: the only option is 'index', the row to serve.")
        if seeded:
            self.walk.restart()
        return [self.start(np_random, options.get("index") if i == 0 else None) for i in range(count)]

    @abstractmethod
    def episode(self, row: int, np_random: np.random.Generator) -> Episode:
        """The episode on `row`; any further randomness is drawn from `np_random`."""

    @abstractmethod
    def score(self, episodes: Sequence[Episode], actions: Sequence[Any]) -> tuple[list[float], list[dict[str, Any]]]:
        """Rewards and step infos of `actions` (already checked) in `episodes`, scored together as one batch."""

    @abstractmethod
    def render(self, episode: Episode, outcome: tuple[Any, float, dict[str, Any]] | None) -> str:
        """The episode as text; after the step also its `outcome`, (action, reward, step info)."""

    def info(self, episode: Episode) -> dict[str, Any]:
        """The reset info: which row the episode serves, by id and index."""
        return {f"{self.kind}_id": self.rows.ids[episode.row], f"{self.kind}_index": episode.row}

    def check_action(self, action: Any) -> Any:
        """`action` as `action_type`; InvalidAction when it is not in `action_space`."""
        if action not in self.action_space:
            shown = _short.repr(action) + (f" ({len(action)} characters)" if isinstance(action, str) else "")
            raise gym.error.InvalidAction(
                f"Action {shown} is not in the action space {self.action_space}: {self.action_help}"
            )
        return self.action_type(action)


class OneStepEnv(gym.Env):
    """A gymnasium `Env` whose episodes are one step of a `OneStepTask`."""

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, task: OneStepTask, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not supported, only {self.metadata['render_modes']}.")
        self._task = task
        self.observation_space, self.action_space = task.observation_space, task.action_space
        self.render_mode = render_mode
        self._episode: Episode | None = None
        self._outcome: tuple[Any, float, dict[str, Any]] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start the next episode; `seed` re-seeds and restarts the walk, `options={"index": i}` serves row i."""
        super().reset(seed=seed)
        (self._episode,) = self._task.restart(self.np_random, 1, seed is not None, options)
        self._outcome = None
        return self._episode.observe(), self._task.info(self._episode)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Score `action`; the episode then ends (terminated) and its observation is returned again."""
        if self._episode is None:
            raise gym.error.ResetNeeded("Call reset() before step().")
        if self._outcome is not None:
            raise gym.error.ResetNeeded("The episode has ended (episodes are one step): call reset() for the next one.")
        action = self._task.check_action(action)
        (reward,), (info,) = self._task.score([self._episode], [action])
        self._outcome = (action, reward, info)
        return self._episode.observe(), reward, True, False, info

    def render(self) -> str | None:
        """With `render_mode="ansi"`, the episode as text (and, once stepped, the action and its reward)."""
        if self.render_mode is None:
            gym.logger.warn('Calling render() without a render mode: create the env with render_mode="ansi".')
            return None
        if self._episode is None:
            raise gym.error.ResetNeeded("Call reset() before render().")
        return self._task.render(self._episode, self._outcome)


class OneStepVectorEnv(VectorEnv):
    """A native vector env serving `num_envs` episodes of a `OneStepTask` per step from one shared walk.

    Autoreset is `SAME_STEP`: each step scores the current episodes, in one `score` call, and returns the next
    ones' observations, with the finished episodes' observations and step infos under "final_obs" and "final_info",
    structured as `SyncVectorEnv(autoreset_mode=SAME_STEP)` structures them.

    With `group_size` K > 1 (`num_envs` a multiple of K), each block of K consecutive sub-envs serves the same
    episode: the walk advances once per block, so one step answers each of `num_envs / K` rows K times (K samples
    of one prompt, to rank against each other). K = 1 serves a row per sub-env.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int, task: OneStepTask, group_size: int = 1) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}.")
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size!r}.")
        if num_envs % group_size:
            raise ValueError(
                f"num_envs={num_envs} is not a multiple of group_size={group_size}: each group of group_size "
                "sub-environments serves one row, so use num_envs = groups x group_size."
            )
        self.num_envs, self.group_size = int(num_envs), int(group_size)
        self._task = task
        self.single_observation_space, self.single_action_space = task.observation_space, task.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._episodes: list[Episode] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start `num_envs` episodes; `seed` re-seeds and restarts the walk, `options={"index": i}` serves row i to
        sub-env 0's group (and, with sequential order, rows i+1, ... to the next groups)."""
        super().reset(seed=seed)
        groups = self._task.restart(self.np_random, self.num_envs // self.group_size, seed is not None, options)
        self._episodes = self._grouped(groups)
        infos: dict[str, Any] = {}
        for i, episode in enumerate(self._episodes):
            infos = self._add_info(infos, self._task.info(episode), i)
        return self._observations(), infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Score one action per sub-env, then start the next `num_envs` episodes."""
        if self._episodes is None:
            raise gym.error.ResetNeeded("Call reset() before step().")
        if actions not in self.action_space:
            raise gym.error.InvalidAction(
                f"Actions {_short.repr(actions)} are not in the action space: expected {self.num_envs} actions, "
                f"one per sub-environment, each in {self.single_action_space}: {self._task.action_help}"
            )
        finished = self._episodes
        rewards, step_infos = self._task.score(finished, [self._task.action_type(action) for action in actions])
        self._episodes = self._grouped(
            [self._task.start(self.np_random) for _ in range(self.num_envs // self.group_size)]
        )
        infos: dict[str, Any] = {}
        for i, (episode, step_info) in enumerate(zip(finished, step_infos, strict=True)):
            infos = self._add_info(infos, {"final_obs": episode.observe(), "final_info": step_info}, i)
            infos = self._add_info(infos, self._task.info(self._episodes[i]), i)
        terminations = np.ones(self.num_envs, dtype=np.bool_)
        truncations = np.zeros(self.num_envs, dtype=np.bool_)
        return self._observations(), np.array(rewards, dtype=np.float64), terminations, truncations, infos

    def _grouped(self, episodes: list[Episode]) -> list[Episode]:
        """One episode per group → one per sub-env: each repeated `group_size` times, in order."""
        return [episode for episode in episodes for _ in range(self.group_size)]

    def _observations(self) -> Any:
        """The current episodes' observations batched as `SyncVectorEnv` batches them."""
        observations = [episode.observe() for episode in self._episodes]
        empty = create_empty_array(self.single_observation_space, n=self.num_envs)
        return concatenate(self.single_observation_space, observations, empty)
