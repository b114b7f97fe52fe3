"""PreferencePairs-v0: pick the human-preferred of two completions; mean return over a split is preference accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Dict, Discrete, Tuple

from .one_step import Episode, OneStepEnv, OneStepTask, OneStepVectorEnv
from .source import DatasetRows
from .spaces import UnicodeText


class PreferencePairsTask(OneStepTask):
    """Episodes over (prompt, chosen, rejected) rows, the two candidates in a seeded random order."""

    kind = "pair"
    action_type = int
    action_help = "pass the index, 0 or 1, of the preferred completion in observation['completions']."

    def __init__(self, dataset: Any, order: str, max_text_length: int | None) -> None:
        super().__init__(DatasetRows(dataset, ("prompt", "chosen", "rejected")), order)
        length = self.rows.length_bound(max_text_length, "max_text_length")
        self.observation_space = Dict(
            {"prompt": UnicodeText(length), "completions": Tuple((UnicodeText(length), UnicodeText(length)))}
        )
        self.action_space = Discrete(2)

    def episode(self, row: int, np_random: np.random.Generator) -> Episode:
        prompt, chosen, rejected = (self.rows.columns[column][row] for column in ("prompt", "chosen", "rejected"))
        position = int(np_random.integers(2))
        completions = (chosen, rejected) if position == 0 else (rejected, chosen)
        return Episode(row, {"prompt": prompt, "completions": completions}, answer=position)

    def score(self, episodes: Sequence[Episode], actions: Sequence[int]) -> tuple[list[float], list[dict[str, Any]]]:
        rewards = [float(action == episode.answer) for episode, action in zip(episodes, actions, strict=True)]
        return rewards, [{**self.info(episode), "correct_action": episode.answer} for episode in episodes]

    def render(self, episode: Episode, outcome: tuple[int, float, dict[str, Any]] | None) -> str:
        first, second = episode.observation["completions"]
        lines = [
            f"Pair {self.rows.ids[episode.row]} (row {episode.row})",
            f"Prompt: {episode.observation['prompt']}",
            f"[0] {first}",
            f"[1] {second}",
        ]
        if outcome is not None:
            action, reward, _ = outcome
            lines.append(f"Picked [{action}], preferred [{episode.answer}]: reward {reward}")
        return "\n".join(lines)


class PreferencePairsEnv(OneStepEnv):
    """Pick the human-preferred of two completions of a prompt, one preference pair per episode.

    ## Description

    Each episode serves one row of a preference dataset: a prompt, the completion a human preferred (`chosen`)
    and the other one (`rejected`), shown in a seeded random order. Walked in order over a held-out split, the
    mean return is the agent's preference accuracy.

    ## Action Space

    `Discrete(2)`: the index in `observation["completions"]` of the completion the agent prefers.

    ## Observation Space

    `Dict({"prompt": UnicodeText(L), "completions": Tuple((UnicodeText(L), UnicodeText(L)))})`: the prompt and
    the two candidates, strings of any characters, L = `max_text_length` or the longest text in the dataset.

    ## Rewards

    1.0 for picking the chosen completion, else 0.0.

    ## Starting State

    The next row of the walk: rows 0, 1, ..., n-1, then 0 again (`order="sequential"`), or a uniformly drawn
    row (`order="random"`). `reset(options={"index": i})` serves row i; `reset(seed=s)` restarts the walk.
    Reset info: `{"pair_id": str, "pair_index": int}` (the row's `id` column, else its index), not the answer.

    ## Episode End

    After one step: `terminated=True`, `truncated=False`; the observation is returned again. Step info adds
    `"correct_action"`. Stepping again without a reset raises `ResetNeeded`.

    ## Arguments

    - `dataset`: a `datasets.Dataset` or a sequence of mappings with string columns `prompt`, `chosen`,
      `rejected` (conversational rows must be rendered to text first), and optionally `id`.
    - `order`: `"sequential"` (default) or `"random"`.
    - `max_text_length`: the bound L of the text spaces; None for the longest text in the dataset.
    - `render_mode`: None or `"ansi"` (the pair as text and, after the step, the pick and the answer).

    ## Example

    >>> import gymnasium as gym
    >>> import dpo_plugin_envs
    >>> pairs = [{"prompt": "What is 7 times 8?", "chosen": "56.", "rejected": "54."},
    ...          {"prompt": "Is a tomato a fruit?", "chosen": "Botanically, yes: a berry.", "rejected": "No."}]
    >>> env = gym.make("dpo_plugin/PreferencePairs-v0", dataset=pairs)
    >>> env
    <OrderEnforcing<PassiveEnvChecker<PreferencePairsEnv<dpo_plugin/PreferencePairs-v0>>>>
    >>> env.action_space
    Discrete(2)
    >>> observation, info = env.reset(seed=0)
    >>> observation["prompt"], info
    ('What is 7 times 8?', {'pair_id': '0', 'pair_index': 0})
    >>> action = observation["completions"].index("56.")  # an oracle: pick the chosen completion
    >>> observation, reward, terminated, truncated, info = env.step(action)
    >>> reward, terminated, truncated, info["correct_action"] == action
    (1.0, True, False, True)
    >>> env.reset()[1]  # the next pair of the sequential walk
    {'pair_id': '1', 'pair_index': 1}

    ## Version History

    * v0: Initial version, registered as `dpo_plugin/PreferencePairs-v0` (vector entry point
      `PreferencePairsVectorEnv`): one-step episodes over (prompt, chosen, rejected) rows, the two completions in a
      seeded random order, `Discrete(2)` actions, reward 1.0 for the chosen completion, rows in sequential or random
      order.
    """

    def __init__(
        self,
        dataset: Any,
        order: str = "sequential",
        max_text_length: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(PreferencePairsTask(dataset, order, max_text_length), render_mode)


class PreferencePairsVectorEnv(OneStepVectorEnv):
    """`num_envs` `PreferencePairsEnv` episodes per step, from one walk over the dataset.

    With sequential order, reset serves rows 0..N-1, the next step's new episodes rows N..2N-1, and so on (the
    last batch wraps around to row 0), so the first n episodes are each pair once, in order. Autoreset is
    `SAME_STEP`: a step scores the current pairs and returns the next ones; infos hold the new episodes' reset
    infos and, under "final_obs" and "final_info", the scored episodes' observations and step infos. Same seed,
    same episodes as one `PreferencePairsEnv` stepped N times as often. Arguments as `PreferencePairsEnv`.

    ## Example

    >>> import gymnasium as gym
    >>> import dpo_plugin_envs
    >>> pairs = [{"prompt": "What is 7 times 8?", "chosen": "56.", "rejected": "54."},
    ...          {"prompt": "Is a tomato a fruit?", "chosen": "Botanically, yes: a berry.", "rejected": "No."}]
    >>> envs = gym.make_vec(
    ...     "dpo_plugin/PreferencePairs-v0", num_envs=2, vectorization_mode="vector_entry_point", dataset=pairs
    ... )
    >>> envs
    PreferencePairsVectorEnv(dpo_plugin/PreferencePairs-v0, num_envs=2)
    >>> observations, infos = envs.reset(seed=0)
    >>> observations["prompt"], infos["pair_index"].tolist()
    (('What is 7 times 8?', 'Is a tomato a fruit?'), [0, 1])
    >>> observations, rewards, terminations, truncations, infos = envs.step([0, 0])
    >>> rewards.tolist(), terminations.tolist(), infos["final_info"]["correct_action"].tolist()
    ([0.0, 0.0], [True, True], [1, 1])

    ## Version History

    * v0: Initial version, the native vector env of `dpo_plugin/PreferencePairs-v0`
      (`gymnasium.make_vec(..., vectorization_mode="vector_entry_point")`): one shared walk over the rows,
      `SAME_STEP` autoreset.
    """

    def __init__(
        self,
        num_envs: int,
        dataset: Any,
        order: str = "sequential",
        max_text_length: int | None = None,
    ) -> None:
        super().__init__(num_envs, PreferencePairsTask(dataset, order, max_text_length))
