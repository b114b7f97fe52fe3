"""The one `Completion-v0` rollout: completions of prompt rows sampled by a policy and scored through the grouped
environment, `group_size` a prompt. It serves the on-policy loop's groups, the loop's held-out sampling and
`dpo-plugin eval` (one completion a prompt), so all three sample alike and at one speed; the prompt helpers that
turn a dataset into its rows sit beside it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import gymnasium
import torch
from datasets import Dataset
from dpo_plugin_envs import RewardFn  # importing it registers the environments
from tqdm.auto import tqdm
from trl.data_utils import maybe_apply_chat_template

from ..utils.errors import UserError
from .policies import CompletionSampler
from .scoring import prompt_token_ids


@dataclass
class Group:
    """The completions of one `prompt` (row `row` of the rows sampled): their rewards (the weighted sum of the reward
    functions, less any missing-EOS penalty), each reward function's unweighted values (`components`), and the
    token ids as sampled (for the KL)."""

    row: int
    prompt: str
    completions: list[str]
    rewards: list[float]
    components: dict[str, list[float]]
    prompt_ids: list[int]
    completion_ids: list[list[int]]


@dataclass
class Rollout:
    """The groups, longest prompt first, and the seconds spent sampling (the policy's `generate`) and ranking (the
    reward functions, in the environment's step)."""

    groups: list[Group] = field(default_factory=list)
    sampling_seconds: float = 0.0
    ranking_seconds: float = 0.0


def sample_groups(
    sampler: CompletionSampler,
    rows: Sequence[Mapping],
    rewards: Mapping[str, RewardFn],
    group_size: int = 1,
    prompts_per_call: int = 16,
    seed: int = 0,
    *,
    reward_weights: Mapping[str, float] | None = None,
    missing_eos_penalty: float | None = None,
    progress: bool = True,
    desc: str = "Sampling groups",
    should_stop: Callable[[], bool] = lambda: False,
) -> Rollout:
    """`group_size` completions of the `prompt` of each of `rows`, `prompts_per_call` prompts per `generate` call,
    the prompts longest first in tokens (a stable sort, so the prompts of one call are of about one length and little
    of it is padding). Each vector step of the grouped environment serves each prompt to `group_size` sub-environments,
    the policy answers them all, and the step's rewards rank them (the rows' other columns and the completions' token
    ids passed to the reward functions that take them, as TRL passes them); `missing_eos_penalty` is subtracted from
    the reward of each completion that does not end in EOS, as in TRL. Sampling draws from `torch.manual_seed(seed)`.
    Stops early, with the groups so far, once `should_stop()` after a step."""
    order = sorted(range(len(rows)), key=lambda i: -len(prompt_token_ids(sampler.tokenizer, rows[i]["prompt"])))
    groups_per_step = min(prompts_per_call, len(rows))
    env = gymnasium.make_vec(
        "dpo_plugin/Completion-v0",
        num_envs=groups_per_step * group_size,
        vectorization_mode="vector_entry_point",
        dataset=[rows[i] for i in order],
        reward_fn=dict(rewards),
        reward_weights=reward_weights,
        group_size=group_size,
        processing_class=sampler.tokenizer,
    )
    eos_id = sampler.tokenizer.eos_token_id
    observations, _ = env.reset(seed=seed)
    torch.manual_seed(seed)
    result = Rollout()
    with tqdm(total=len(rows), desc=desc, unit="prompt", disable=not progress, leave=False) as bar:
        while len(result.groups) < len(rows) and not should_stop():
            served, started = list(observations), time.perf_counter()
            samples = sampler.sample(served)
            result.sampling_seconds += time.perf_counter() - started
            started = time.perf_counter()
            observations, step_rewards, _, _, infos = env.step(tuple(samples.texts))
            result.ranking_seconds += time.perf_counter() - started
            components = infos["final_info"]["reward_components"]
            keep = min(groups_per_step, len(rows) - len(result.groups))  # the last step wraps to the first rows
            if missing_eos_penalty is not None:
                step_rewards = [
                    reward - missing_eos_penalty * (not ids or ids[-1] != eos_id)
                    for reward, ids in zip(step_rewards, samples.completion_ids, strict=True)
                ]
            for start in range(0, keep * group_size, group_size):
                members = range(start, start + group_size)
                result.groups.append(
                    Group(
                        row=order[len(result.groups)],
                        prompt=served[start],
                        completions=[samples.texts[i] for i in members],
                        rewards=[float(step_rewards[i]) for i in members],
                        components={name: [float(values[i]) for i in members] for name, values in components.items()},
                        prompt_ids=samples.prompt_ids[start],
                        completion_ids=[samples.completion_ids[i] for i in members],
                    )
                )
            bar.update(keep)
    env.close()
    return result


def prompt_rows(dataset: Dataset | None, tokenizer) -> list[dict]:
    """The dataset's rows with their prompts as the policy completes them (`prompt_texts`) and every other column
    as it is: what the reward functions get, as TRL passes a dataset's columns."""
    texts = prompt_texts(dataset, tokenizer)
    others = [name for name in dataset.column_names if name != "prompt"]
    columns = {name: dataset[name] for name in others}
    return [{"prompt": text, **{name: values[i] for name, values in columns.items()}} for i, text in enumerate(texts)]


def prompt_texts(dataset: Dataset | None, tokenizer) -> list[str]:
    """The prompt texts the policy completes: string prompts as they are, conversations through the chat template
    with the generation prompt (as TRL renders them)."""
    if dataset is None or "prompt" not in dataset.column_names:
        raise UserError("train_dataset needs a `prompt` column: the prompts the policy completes each round.")
    if len(dataset) == 0:
        raise UserError("train_dataset has no prompts.")
    rendered = (maybe_apply_chat_template({"prompt": row["prompt"]}, tokenizer) for row in dataset)
    return [row["prompt"] for row in rendered]
