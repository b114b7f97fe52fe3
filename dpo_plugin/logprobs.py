"""Per-token log-probabilities, masked sums and per-position KL divergences computed from logits.

Everything is computed in float32, whatever the dtype of the model's logits.
"""

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token log-probability of the labels: log π(y_t | ·) = log_softmax(logits)[..., y_t].

    `logits` is (..., V), `labels` is (...) of integer token ids; positions whose label is -100 give 0.
    """
    safe_labels = labels.clamp(min=0).unsqueeze(-1)
    logps = F.log_softmax(logits.float(), dim=-1).gather(-1, safe_labels).squeeze(-1)
    return logps.masked_fill(labels == IGNORE_INDEX, 0.0)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over completion tokens: Σ_t values[..., t] · mask[..., t] (last dimension), in float32."""
    return (values.float() * mask.float()).sum(-1)


def completion_lengths(mask: Tensor) -> Tensor:
    """Number of completion tokens per row, max(Σ_t mask[..., t], 1), so an all-masked row never divides by 0."""
    return mask.float().sum(-1).clamp(min=1.0)


def token_kl(ref_logits: Tensor, policy_logits: Tensor) -> Tensor:
    """Per-position KL(π_ref ‖ π_θ) = Σ_v p_ref(v) (log p_ref(v) − log p_θ(v)) over the last (vocabulary) dim.

    Both sides go through log_softmax in float32 and only the reference log-probs are exponentiated, so
    extreme logits give finite values where softmax().log() would give -inf and NaN. Returns shape
    logits.shape[:-1]; gradients reach both inputs unless the caller detaches the reference.
    """
    ref_logps = F.log_softmax(ref_logits.float(), dim=-1)
    policy_logps = F.log_softmax(policy_logits.float(), dim=-1)
    return (ref_logps.exp() * (ref_logps - policy_logps)).sum(-1)
