"""What a step logs: TRL's `DPOTrainer` keys, with TRL's definitions, from a `Reading` and the objective's result,
plus `kl/chosen` and `kl/rejected` where SeqKL is read."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .losses import PreferenceLoss
from .reader import Reading

Gather = Callable[[Tensor], Tensor]


def _same(tensor: Tensor) -> Tensor:
    return tensor


def step_metrics(
    reading: Reading, result: PreferenceLoss, gather_tokens: Gather = _same, gather_pairs: Gather = _same
) -> dict[str, float]:
    """The step's logged values. Token statistics are ratios of sums over every process's completion tokens
    (`gather_tokens`, TRL's `gather_for_metrics`): the mean entropy of π_θ, its mean logit on chosen and on rejected
    completions, and the fraction of chosen tokens that are its argmax (`mean_token_accuracy`). Pair statistics are
    means over every process's pairs (`gather_pairs`, TRL's `gather`): implicit rewards, their margin and how often
    the chosen one is larger, the summed log-probs, and SeqKL. One process: the defaults gather nothing."""

    def ratio(numerator: Tensor, denominator: Tensor) -> float:
        numerator, denominator = gather_tokens(numerator).sum().item(), gather_tokens(denominator).sum().item()
        return numerator / denominator if denominator > 0 else 0.0

    def mean(values: Tensor) -> float:
        return gather_pairs(values).mean().item()

    mask = reading.mask
    chosen_mask, rejected_mask = mask.chunk(2)
    chosen_logits, rejected_logits = reading.mean_logits.chunk(2)
    chosen_top1 = reading.is_top1.chunk(2)[0].bool() & chosen_mask.bool()
    chosen_rewards, rejected_rewards = result.chosen_rewards, result.rejected_rewards
    chosen_logps, rejected_logps = reading.logps.detach().chunk(2)
    metrics = {
        "entropy": ratio((reading.entropy * mask).sum(), mask.sum()),
        "logits/chosen": ratio(chosen_logits[chosen_mask.bool()].sum(), chosen_mask.sum()),
        "logits/rejected": ratio(rejected_logits[rejected_mask.bool()].sum(), rejected_mask.sum()),
        "mean_token_accuracy": ratio(chosen_top1.sum(), chosen_mask.sum()),
        "rewards/chosen": mean(chosen_rewards),
        "rewards/rejected": mean(rejected_rewards),
        "rewards/accuracies": mean((chosen_rewards > rejected_rewards).float()),
        "rewards/margins": mean(chosen_rewards - rejected_rewards),
        "logps/chosen": mean(chosen_logps),
        "logps/rejected": mean(rejected_logps),
    }
    if reading.seq_kl is not None:
        chosen_kl, rejected_kl = reading.seq_kl.detach().chunk(2)
        metrics |= {"kl/chosen": mean(chosen_kl), "kl/rejected": mean(rejected_kl)}
    return metrics
