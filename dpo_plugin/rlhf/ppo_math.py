"""The tensor maths of PPO with a KL penalty, one function per equation: no models, no I/O.

Every per-token tensor is (B, T) over completion tokens only, right-padded: `mask` is 1 on the completion tokens of
each row and 0 on its padding, and padding positions neither contribute to a result nor receive a value (they get 0).
Everything is computed in float32.
"""

from typing import NamedTuple

import torch
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Σ values·mask / max(Σ mask, 1): the mean over completion tokens (0 when there are none)."""
    mask = mask.float()
    return (values.float() * mask).sum() / mask.sum().clamp(min=1.0)


def token_entropy(log_probs: Tensor) -> Tensor:
    """H(π(·|x, y<t)) = −Σ_v π(v) log π(v) over the last (vocabulary) dim of full-vocabulary log-probs."""
    return -(log_probs.exp() * log_probs).sum(-1)


def token_rewards(logps: Tensor, ref_logps: Tensor, scores: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """r_t = −kl_coef · (log πθ(y_t) − log πref(y_t)) on each completion token, plus the row's score at its last token.

    `logps`, `ref_logps` and `mask` are (B, T); `scores` (B,) are the reward function's. A row with no completion
    token gets no score (there is no token to carry it).
    """
    mask = mask.float()
    rewards = -kl_coef * (logps.float() - ref_logps.float()) * mask
    lengths = mask.sum(-1).long()
    last = (lengths - 1).clamp(min=0).unsqueeze(-1)
    score_at_last = (scores.float() * (lengths > 0)).unsqueeze(-1)
    return rewards.scatter_add(-1, last, score_at_last)


def generalized_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE (Schulman et al. 2016) backwards over each row's completion tokens; returns (advantages, returns).

    δ_t = r_t + γ V_{t+1} − V_t (V = 0 after the last token), A_t = δ_t + γλ A_{t+1}, returns R_t = A_t + V_t.
    Padding is right of every row's last token, so zeroing rewards and values there ends each row at its last token.
    """
    mask = mask.float()
    rewards, values = rewards.float() * mask, values.float() * mask
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − μ) / sqrt(σ² + eps) with μ and σ² the mean and (population) variance over completion tokens; 0 elsewhere."""
    mask = mask.float()
    mean = masked_mean(values, mask)
    variance = masked_mean((values.float() - mean) ** 2, mask)
    return (values.float() - mean) * torch.rsqrt(variance + eps) * mask


class PolicyLoss(NamedTuple):
    """The clipped surrogate loss and two diagnostics, each a mean over completion tokens.

    `clipfrac`: fraction of tokens where the clipped term is the larger one (the clip removes their gradient);
    `approx_kl`: the k3 estimator of KL(π_old ‖ πθ), mean of (ρ − 1) − log ρ (non-negative, unbiased).
    """

    loss: Tensor
    clipfrac: Tensor
    approx_kl: Tensor


def clipped_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip: float) -> PolicyLoss:
    """L = mean_t max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)), ρ_t = exp(log πθ(y_t) − log π_old(y_t)), ε = `clip`."""
    log_ratio = (logps.float() - old_logps.float()) * mask
    ratio = log_ratio.exp()
    unclipped = -advantages.float() * ratio
    clipped = -advantages.float() * ratio.clamp(1.0 - clip, 1.0 + clip)
    return PolicyLoss(
        loss=masked_mean(torch.maximum(unclipped, clipped), mask),
        clipfrac=masked_mean((clipped > unclipped).float(), mask).detach(),
        approx_kl=masked_mean((ratio - 1.0) - log_ratio, mask).detach(),
    )


class ValueLoss(NamedTuple):
    """The clipped value loss and `clipfrac`, the fraction of tokens where the clipped error is the larger one."""

    loss: Tensor
    clipfrac: Tensor


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float) -> ValueLoss:
    """L = 0.5 · mean_t max((V_t − R_t)², (clip(V_t, V_old,t − ε, V_old,t + ε) − R_t)²), ε = `clip`."""
    values, old_values, returns = values.float(), old_values.float(), returns.float()
    unclipped = (values - returns) ** 2
    clipped = (torch.clamp(values, old_values - clip, old_values + clip) - returns) ** 2
    return ValueLoss(
        loss=0.5 * masked_mean(torch.maximum(unclipped, clipped), mask),
        clipfrac=masked_mean((clipped > unclipped).float(), mask).detach(),
    )
