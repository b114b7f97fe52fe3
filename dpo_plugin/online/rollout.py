"""One round's samples: groups of completions of each prompt, sampled by the policy and scored through the grouped
`Completion-v0` environment, the sampler's and the ranker's only path."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import gymnasium
import torch
from dpo_plugin_envs import RewardFn  # importing it registers the environments
from tqdm.auto import tqdm

from ..evaluation.policies import CompletionSampler


@dataclass
class Group:
    """The `samples` completions of one `prompt`, their rewards, and their token ids (as sampled, for the KL)."""

    prompt: str
    completions: list[str]
    rewards: list[float]
    prompt_ids: list[int]
    completion_ids: list[list[int]]


@dataclass
class RoundSamples:
    """A round's groups, and the seconds spent sampling (the policy's `generate`) and ranking (the reward
    functions, in the environment's step)."""

    groups: list[Group] = field(default_factory=list)
    sampling_seconds: float = 0.0
    ranking_seconds: float = 0.0


def sample_groups(
    sampler: CompletionSampler,
    rows: Sequence[Mapping],
    rewards: Mapping[str, RewardFn],
    reward_weights: Mapping[str, float] | None,
    group_size: int,
    prompts_per_call: int,
    seed: int,
    missing_eos_penalty: float | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
) -> RoundSamples:
    """`group_size` completions of the `prompt` of each of `rows`, `prompts_per_call` prompts per `generate` call:
    each vector step of the grouped environment serves each prompt to `group_size` sub-environments, the policy
    answers them all, and the step's rewards rank them (the rows' other columns and the completions' token ids
    passed to the reward functions that take them, as TRL passes them); `missing_eos_penalty` is subtracted from
    the reward of each completion that does not end in EOS, as in TRL. Stops early, with the groups so far, once
    `should_stop()` after a step."""
    prompts = [row["prompt"] for row in rows]
    groups_per_step = min(prompts_per_call, len(prompts))
    env = gymnasium.make_vec(
        "dpo_plugin/Completion-v0",
        num_envs=groups_per_step * group_size,
        vectorization_mode="vector_entry_point",
        dataset=list(rows),
        reward_fn=dict(rewards),
        reward_weights=reward_weights,
        group_size=group_size,
        processing_class=sampler.tokenizer,
    )
    eos_id = sampler.tokenizer.eos_token_id
    observations, _ = env.reset(seed=seed)
    torch.manual_seed(seed)
    result = RoundSamples()
    with tqdm(total=len(prompts), desc="Sampling groups", unit="prompt", disable=not progress, leave=False) as bar:
        while len(result.groups) < len(prompts) and not should_stop():
            served, started = list(observations), time.perf_counter()
            samples = sampler.sample(served)
            result.sampling_seconds += time.perf_counter() - started
            started = time.perf_counter()
            observations, step_rewards, _, _, _ = env.step(tuple(samples.texts))
            result.ranking_seconds += time.perf_counter() - started
            keep = min(groups_per_step, len(prompts) - len(result.groups))  # the last step wraps to the first rows
            if missing_eos_penalty is not None:
                step_rewards = [
                    reward - missing_eos_penalty * (not ids or ids[-1] != eos_id)
                    for reward, ids in zip(step_rewards, samples.completion_ids, strict=True)
                ]
            for start in range(0, keep * group_size, group_size):
                members = range(start, start + group_size)
                result.groups.append(
                    Group(
                        prompt=served[start],
                        completions=[samples.texts[i] for i in members],
                        rewards=[float(step_rewards[i]) for i in members],
                        prompt_ids=samples.prompt_ids[start],
                        completion_ids=[samples.completion_ids[i] for i in members],
                    )
                )
            bar.update(keep)
    env.close()
    return result
