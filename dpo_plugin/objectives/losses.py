"""Preference objectives as pure tensor maths: DPO, cDPO, reference-free DPO, IPO, TDPO1 and TDPO2.

Each function takes per-pair log-ratios Δ(y) = log πθ(y|x) − log πref(y|x) of shape (B,) and returns the
per-pair losses with the implicit rewards; h = Δ(y_w) − Δ(y_l) throughout.
"""

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

OBJECTIVES = ("dpo", "ipo", "tdpo1", "tdpo2")
# The token-level objectives: they need the reference's full next-token distribution at every completion position.
TOKEN_LEVEL_OBJECTIVES = ("tdpo1", "tdpo2")


class PreferenceLoss(NamedTuple):
    """Per-pair losses (B,) and the detached implicit rewards of the chosen and rejected completions (B,)."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def _rewards(beta: float, chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    """Implicit rewards r(x, y) = β Δ(y) for both completions, detached."""
    return (beta * chosen).detach(), (beta * rejected).detach()


def dpo_loss(
    chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float, label_smoothing: float = 0.0
) -> PreferenceLoss:
    """DPO and conservative DPO: L = −(1−ε) log σ(β h) − ε log σ(−β h).

    ε = 0 is DPO (Rafailov et al. 2023, eq. 7); ε > 0 is cDPO, ε being the probability that a preference
    label is flipped. Reference-free DPO is the caller passing log-ratios computed with log πref ≡ 0, that
    is the policy's summed log-probs. Rewards are β Δ(y).
    """
    chosen, rejected = chosen_logratios.float(), rejected_logratios.float()
    logits = beta * (chosen - rejected)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, *_rewards(beta, chosen, rejected))


def ipo_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    beta: float,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> PreferenceLoss:
    """IPO: L = (h − 1/(2β))², Azar et al. 2023, eq. 17 with τ = β.

    Without lengths, h uses the summed log-ratios (Mitchell's reference code). With lengths, each Δ(y) is
    first divided by its completion length, clamped to ≥ 1 (the length-averaged form, TRL's `ipo`).
    Rewards are β Δ(y) from the summed log-ratios in both forms, as TRL logs them for `ipo`.
    """
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo_loss needs both chosen_lengths and rejected_lengths, or neither")
    chosen, rejected = chosen_logratios.float(), rejected_logratios.float()
    if chosen_lengths is None:
        h = chosen - rejected
    else:
        h = chosen / chosen_lengths.float().clamp(min=1.0) - rejected / rejected_lengths.float().clamp(min=1.0)
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLoss(losses, *_rewards(beta, chosen, rejected))


def tdpo_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    chosen_seq_kl: Tensor,
    rejected_seq_kl: Tensor,
    beta: float,
    alpha: float | None = None,
) -> PreferenceLoss:
    """Token-level DPO (Zeng et al. 2024), with SeqKL(y) = Σ_t KL(πref(·|x,y<t) ‖ πθ(·|x,y<t)).

    TDPO1 (alpha is None): L = −log σ(β [h − (SeqKL(y_l) − SeqKL(y_w))]).
    TDPO2 (alpha given):   L = −log σ(β [h − α (SeqKL(y_l) − sg(SeqKL(y_w)))]), sg = stop-gradient.
    Rewards are β (Δ(y) + SeqKL(y)), detached, as the TDPO reference code reports them.
    """
    chosen, rejected = chosen_logratios.float(), rejected_logratios.float()
    chosen_kl, rejected_kl = chosen_seq_kl.float(), rejected_seq_kl.float()
    if alpha is None:
        kl_margin = rejected_kl - chosen_kl
    else:
        kl_margin = alpha * (rejected_kl - chosen_kl.detach())
    losses = -F.logsigmoid(beta * (chosen - rejected - kl_margin))
    return PreferenceLoss(losses, *_rewards(beta, chosen + chosen_kl, rejected + rejected_kl))
