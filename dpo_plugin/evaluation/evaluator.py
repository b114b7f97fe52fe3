"""`HeldoutEvaluator`: one policy against its reference on held-out data, the one evaluation `dpo-plugin train`,
`dpo-plugin eval` and `dpo-plugin compare` run.

The policy and the reference come as (model, context) pairs: each model is scored and sampled inside its context
(the training precision's autocast; for a PEFT policy's reference, its adapters off). The reference's scores are
memoized for the evaluator's life, since the reference never moves; the policy is scored afresh by each call, since
it may be training. `heldout.py` walks the environments; this module only decides who scores what.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager

import torch
from dpo_plugin_envs import RewardFn

from ..utils.modes import in_eval_mode
from .heldout import Accuracy, SampleReport, preference_accuracies, preference_accuracy, sampled_completions
from .policies import CompletionSampler, PreferenceChooser
from .scoring import FrozenScores, SequenceScorer

ModelInContext = tuple[torch.nn.Module, Callable[[], AbstractContextManager]]


class HeldoutEvaluator:
    """Preference accuracy and sampled completions of `policy` against `reference`, `batch_size` rows per scoring
    call, sequences truncated to `max_length` tokens (None: not truncated), `sampling_batch_size` prompts per sampling
    call (default `batch_size`; sampling is fastest in large calls), the samples' KL scored as many rows a call.

    Before training, `keep_scores_before_training` scores held-out pairs that training would otherwise make
    unscoreable: the reference's, where the reference is the policy before training (precomputed log-probs, no
    reference held while training), and the policy's start π_0, to also rank pairs by log π_θ − log π_0 when the
    reference is quantized (what training changed, without the quantization error in it).
    """

    def __init__(
        self,
        policy: ModelInContext,
        reference: ModelInContext,
        tokenizer,
        batch_size: int = 16,
        max_length: int | None = None,
        sampling_batch_size: int | None = None,
    ):
        self.policy, self.tokenizer = policy, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.sampling_batch_size = sampling_batch_size or batch_size
        self.reference_model, self.reference_context = reference
        self.live_reference = self._scorer(reference)
        self.reference_scores: SequenceScorer | FrozenScores = self.live_reference
        self.start_scores: FrozenScores | None = None

    def with_policy(self, policy: ModelInContext) -> HeldoutEvaluator:
        """The same evaluation of another policy against the same reference, sharing its memoized scores."""
        other = copy.copy(self)
        other.policy = policy
        return other

    def keep_scores_before_training(self, pairs, *, reference: bool, start: bool) -> None:
        """Score the text `pairs` now, before the policy moves: the reference's log-probs where `reference`, and the
        policy's as it starts where `start`; later calls rank those pairs with the kept scores."""
        prompts = list(pairs["prompt"]) * 2
        completions = list(pairs["chosen"]) + list(pairs["rejected"])
        with in_eval_mode(self.policy[0]):
            if reference:
                self.reference_scores = FrozenScores(self.reference_scores, prompts, completions)
            if start:
                self.start_scores = FrozenScores(self._scorer(self.policy), prompts, completions)

    def accuracies(self, pairs, seed: int = 0) -> dict[str, Accuracy]:
        """Every ranking of `preference_accuracies`: the reference and the policy by likelihood, the policy by
        implicit reward, and (with kept start scores) by implicit reward against its start."""
        with in_eval_mode(self.policy[0]):
            policy = self._scorer(self.policy)
            return preference_accuracies(
                policy, self.reference_scores, pairs, self.batch_size, seed, start=self.start_scores
            )

    def accuracy(self, pairs, seed: int = 0) -> Accuracy:
        """PreferencePairs-v0 over `pairs`, choosing by implicit reward log π_θ/π_ref (β does not change a ranking)."""
        with in_eval_mode(self.policy[0]):
            chooser = PreferenceChooser.by_implicit_reward(self._scorer(self.policy), self.reference_scores)
            return preference_accuracy(chooser, pairs, self.batch_size, seed)

    def samples(
        self,
        prompts: Sequence[str],
        rewards: Mapping[str, RewardFn],
        generation: dict,
        seed: int = 0,
        sample_from: str = "policy",
    ) -> SampleReport:
        """Completion-v0 over `prompts`: one completion each sampled from the policy (`sample_from`), with its mean
        sampled KL(π_θ ‖ π_ref), or from the reference; rated by each of `rewards`. `generation` goes to
        `generate` (e.g. `max_new_tokens`, `temperature`)."""
        if sample_from == "reference":
            sampler = CompletionSampler(self.reference_model, self.tokenizer, generation, self.reference_context)
            return sampled_completions(
                sampler, prompts, rewards, None, self.sampling_batch_size, seed, "Sampling from the reference"
            )
        if self.reference_scores is not self.live_reference:
            raise ValueError(
                "The reference was the policy before training (precomputed log-probs) and is gone: sample with "
                "`dpo-plugin eval`, which loads the reference from its checkpoint."
            )
        model, context = self.policy
        with in_eval_mode(self.policy[0]):
            sampler = CompletionSampler(model, self.tokenizer, generation, context)
            reference = (self.reference_model, self.reference_context)
            kl_scorers = (
                self._scorer(self.policy, self.sampling_batch_size),
                self._scorer(reference, self.sampling_batch_size),
            )
            return sampled_completions(
                sampler, prompts, rewards, kl_scorers, self.sampling_batch_size, seed, "Sampling from the policy"
            )

    def _scorer(self, model_in_context: ModelInContext, batch_size: int | None = None) -> SequenceScorer:
        """A scorer of the model in its context, `batch_size` rows a call (default the evaluator's)."""
        model, context = model_in_context
        return SequenceScorer(model, self.tokenizer, self.max_length, batch_size or self.batch_size, context)
