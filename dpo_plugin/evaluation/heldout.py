"""Gymnasium-style evaluation: language-model agents run through the `envs` environments over held-out data.

Preference accuracy is the mean return of PreferencePairs-v0 walked in order (each held-out pair exactly once);
sampled-completion quality is the mean return of Completion-v0 per reward component, with the sampled
KL(π_θ ‖ π_ref) = E_{y∼π_θ}[log π_θ(y|x) − log π_ref(y|x)] scored on exactly the sampled tokens. Both use native
vector environments, so a model scores a whole batch per call and a reward model rates a whole batch per step.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import gymnasium
import torch
from dpo_plugin_envs import RewardFn  # importing it registers the environments, also where the .pth hook is absent
from tqdm.auto import tqdm

from .policies import CompletionSampler, PreferenceChooser
from .rollout import sample_groups
from .scoring import SequenceScorer, sampled_log_ratios

STARTING_POINT_RANKING = "policy, by implicit reward vs its start"


@dataclass
class Accuracy:
    """A fraction of pairs ranked correctly, with its 95% Wilson score interval."""

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, correct: torch.Tensor) -> Accuracy:
        n, z = correct.numel(), 1.959964
        p = int(correct.sum()) / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return cls(p, centre - half, centre + half)

    def __str__(self) -> str:
        return f"{100 * self.value:5.1f}%  [{100 * self.low:4.1f}, {100 * self.high:4.1f}]"


def preference_accuracy(chooser: PreferenceChooser, pairs, batch_size: int = 16, seed: int = 0) -> Accuracy:
    """Mean return of `chooser` over PreferencePairs-v0 walked in order: each of the text `pairs` exactly once."""
    n = len(pairs)
    env = gymnasium.make_vec(
        "dpo_plugin/PreferencePairs-v0",
        num_envs=min(batch_size, n),
        vectorization_mode="vector_entry_point",
        dataset=pairs,
    )
    observations, _ = env.reset(seed=seed)
    returns: list[float] = []
    with tqdm(total=n, desc=f"Ranking pairs by {chooser.name}", unit="pair") as progress:
        while len(returns) < n:
            observations, rewards, *_ = env.step(chooser(observations))
            new = rewards[: n - len(returns)].tolist()  # the last batch wraps around to the first pairs
            returns += new
            progress.update(len(new))
    env.close()
    return Accuracy.of(torch.tensor(returns) > 0.5)


def preference_accuracies(
    policy: SequenceScorer, reference: SequenceScorer, pairs, batch_size: int = 16, seed: int = 0, start=None
):
    """Accuracy of the reference by likelihood (before training) and of the policy by implicit reward and likelihood;
    with `start` (scores of the policy before training, where the reference differs from it, e.g. quantized), also
    by log π_θ − log π_start: what training changed.

    Each scorer reads every held-out completion once, before the rankings walk the pairs: all of them in one call,
    so its batches are sorted by length across the whole set (`SequenceScorer`); the rankings then read its memo.
    """
    texts = (list(pairs["prompt"]) * 2, list(pairs["chosen"]) + list(pairs["rejected"]))
    for scorer in (reference, policy, start):
        if isinstance(scorer, SequenceScorer):
            scorer(*texts)
    choosers = {
        "reference, by log-likelihood": PreferenceChooser.by_likelihood(reference),
        "policy, by implicit reward": PreferenceChooser.by_implicit_reward(policy, reference),
        "policy, by log-likelihood": PreferenceChooser.by_likelihood(policy),
    }
    if start is not None:
        choosers[STARTING_POINT_RANKING] = PreferenceChooser.by_implicit_reward(policy, start)
    return {name: preference_accuracy(chooser, pairs, batch_size, seed) for name, chooser in choosers.items()}


@dataclass
class SampleReport:
    """Completion-v0 over `completions` prompts: the mean of each reward component, and the mean sampled KL; in
    `standard_errors`, each mean's standard error over the prompts (s/√n; key "kl" for the KL); in `per_prompt`, the
    values behind each mean, one per prompt in prompt order (for intervals over prompts, e.g. a bootstrap)."""

    completions: int
    rewards: dict[str, float]
    kl: float | None
    examples: list[dict[str, str]] = field(default_factory=list)
    standard_errors: dict[str, float] = field(default_factory=dict)
    per_prompt: dict[str, list[float]] = field(default_factory=dict, repr=False)


def sampled_completions(
    sampler: CompletionSampler,
    prompts: Sequence[str],
    rewards: Mapping[str, RewardFn],
    kl_scorers: tuple[SequenceScorer, SequenceScorer] | None = None,
    prompts_per_call: int = 16,
    seed: int = 0,
    desc: str = "Sampling completions",
) -> SampleReport:
    """One completion of each prompt through the one rollout (`rollout.sample_groups`, group size 1), rated by each
    of `rewards`; with `kl_scorers` (policy, reference), also log π_θ(y|x) − log π_ref(y|x) of each sample, scored on
    exactly the sampled tokens. Every per-prompt value in prompt order."""
    rows = [{"prompt": prompt} for prompt in prompts]
    rollout = sample_groups(sampler, rows, rewards, 1, prompts_per_call, seed, desc=desc)
    groups = rollout.groups  # longest prompt first: the KL is scored in that order, batches of one length
    series = {name: [group.components[name][0] for group in groups] for name in rewards}
    if kl_scorers is not None:
        prompt_ids = [group.prompt_ids for group in groups]
        completion_ids = [group.completion_ids[0] for group in groups]
        series["kl"] = sampled_log_ratios(*kl_scorers, prompt_ids, completion_ids).tolist()
    in_prompt_order = sorted(range(len(groups)), key=lambda i: groups[i].row)
    series = {name: [values[i] for i in in_prompt_order] for name, values in series.items()}
    examples = [{"prompt": groups[i].prompt, "completion": groups[i].completions[0]} for i in in_prompt_order[:8]]
    n = len(prompts)
    return SampleReport(
        completions=n,
        rewards={name: sum(series[name]) / n for name in rewards},
        kl=sum(series["kl"]) / n if kl_scorers else None,
        examples=examples,
        standard_errors={name: standard_error(values) for name, values in series.items()},
        per_prompt=series,
    )


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean of `values`, s/√n (0 for fewer than two)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


@dataclass
class EvaluationReport:
    """Held-out preference accuracies and, per sampling model ("reference", "policy"), sampled-completion results."""

    pairs: int
    accuracy: dict[str, Accuracy]
    samples: dict[str, SampleReport] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"Held-out preference accuracy on {self.pairs} pairs (95% Wilson interval)"]
        lines += [f"  {name:<40}{accuracy}" for name, accuracy in self.accuracy.items()]
        if self.samples:
            names = list(next(iter(self.samples.values())).rewards)
            count = next(iter(self.samples.values())).completions
            lines += ["", f"Sampled completions, mean over {count} held-out prompts"]
            lines.append("  " + f"{'':<12}" + "".join(f"{name:>16}" for name in [*names, "KL(π‖π_ref)"]))
            for model, report in self.samples.items():
                kl = "0 (itself)" if report.kl is None else f"{report.kl:.3f}"
                values = [f"{report.rewards[name]:.3f}" for name in names] + [kl]
                lines.append("  " + f"{model:<12}" + "".join(f"{value:>16}" for value in values))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)
