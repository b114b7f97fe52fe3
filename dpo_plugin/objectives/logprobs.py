"""Per-token log-probabilities, masked sums and per-position KL divergences computed from logits.

Everything is computed in float32, whatever the dtype of the model's logits.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor

IGNORE_INDEX = -100


def log_probs_from_logits(logits: Tensor) -> Tensor:
    """log π(v | ·) = log_softmax(logits)[..., v] over the last (vocabulary) dim, in float32 whatever the logits' dtype.

    Compute it once per model and pass it to `token_logps` and `token_kl`: the log-softmax over the vocabulary is
    the costly step, and its output is what backward keeps.
    """
    return F.log_softmax(logits.float(), dim=-1)


def token_logps(log_probs: Tensor, labels: Tensor) -> Tensor:
    """Per-token log-probability of the labels: log π(y_t | ·) = log_probs[..., y_t].

    `log_probs` is (..., V) from `log_probs_from_logits`, `labels` is (...) of token ids; labels of -100 give 0.
    """
    safe_labels = labels.clamp(min=0).unsqueeze(-1)
    logps = log_probs.gather(-1, safe_labels).squeeze(-1)
    return logps.masked_fill(labels == IGNORE_INDEX, 0.0)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over completion tokens: Σ_t values[..., t] · mask[..., t] (last dimension), in float32."""
    return (values.float() * mask.float()).sum(-1)


def completion_lengths(mask: Tensor) -> Tensor:
    """Number of completion tokens per row, max(Σ_t mask[..., t], 1), so an all-masked row never divides by 0."""
    return mask.float().sum(-1).clamp(min=1.0)


def token_kl(ref_log_probs: Tensor, policy_log_probs: Tensor) -> Tensor:
    """Per-position KL(π_ref ‖ π_θ) = Σ_v p_ref(v) (log p_ref(v) − log p_θ(v)) over the last (vocabulary) dim.

    Takes both sides as log-probs (`log_probs_from_logits`) and exponentiates only the reference's, so extreme
    logits give finite values where softmax().log() would give -inf and NaN. Returns shape `log_probs.shape[:-1]`;
    gradients reach both inputs unless the caller detaches the reference.
    """
    return (ref_log_probs.exp() * (ref_log_probs - policy_log_probs)).sum(-1)


class _AtCompletionPositions:
    """What `CompletionLogits` and `CompletionHidden` share: `mask` (B, T), True at the N positions they hold."""

    mask: Tensor

    def scatter(self, values: Tensor) -> Tensor:
        """Per-position values (N,) back into a (B, T) tensor that is zero off the completion."""
        return scatter_positions(self.mask, values)

    def sequence_sum(self, values: Tensor) -> Tensor:
        """Σ over each sequence's completion positions of per-position values (N,) → (B,), float32."""
        return scatter_positions(self.mask, values.float()).sum(dim=1)


@dataclass(frozen=True)
class CompletionLogits(_AtCompletionPositions):
    """Logits at the N positions that predict completion tokens of a right-padded batch, and where they sit.

    `logits` (N, V) and `labels` (N,) are the selected positions; `mask` (B, T) is True at them.
    """

    logits: Tensor
    labels: Tensor
    mask: Tensor


@dataclass(frozen=True)
class CompletionHidden(_AtCompletionPositions):
    """The last hidden states (N, d) at the N positions that predict completion tokens, their `labels` (N,), and
    `mask` (B, T), as `CompletionLogits` has them, for the chunked head (`chunked_head.py`) to project."""

    hidden: Tensor
    labels: Tensor
    mask: Tensor


def scatter_positions(mask: Tensor, values: Tensor) -> Tensor:
    """Per-position values (N,) into a `mask`-shaped tensor, in `mask`'s order, zero where `mask` is False."""
    return values.new_zeros(mask.shape).masked_scatter(mask, values)


def completion_logits(model, model_kwargs: dict, completion_mask: Tensor) -> tuple[CompletionLogits, object]:
    """One forward of a causal LM returning logits only from the batch's first completion position on.

    `logits_to_keep` makes the model project just those positions through its LM head, so no (B, L, V) tensor over
    the prompt is built. Returns the selected logits and the model's raw outputs (for `aux_loss` and the like).
    """
    shifted_mask = completion_mask[:, 1:].bool()
    columns = shifted_mask.any(dim=0).nonzero()
    start = int(columns[0]) if len(columns) else shifted_mask.size(1) - 1
    outputs = model(**model_kwargs, logits_to_keep=shifted_mask.size(1) + 1 - start)
    mask = shifted_mask[:, start:]
    logits = outputs.logits[:, :-1][mask]  # the last kept position predicts past the sequence
    labels = model_kwargs["input_ids"][:, start + 1 :][mask]
    return CompletionLogits(logits, labels, mask), outputs


@contextlib.contextmanager
def last_hidden_state(model) -> Iterator[dict]:
    """While the block runs, `box["hidden"]` is set to the (B, T, d) output of `model`'s decoder, the hidden states
    its LM head projects, on each forward (DDP/FSDP/DeepSpeed wrappers and PEFT looked through)."""
    box: dict = {}

    def keep(module, args, output):
        box["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = extract_model_from_parallel(model).get_decoder().register_forward_hook(keep)
    try:
        yield box
    finally:
        handle.remove()


def completion_hidden(model, model_kwargs: dict, completion_mask: Tensor) -> tuple[CompletionHidden, object]:
    """One forward of a causal LM keeping the decoder's hidden states at the positions that predict completion
    tokens, as `completion_logits` selects them; the model's own head projects only the last position
    (`logits_to_keep=1`), whose logits come back in the outputs, to check a head against."""
    with last_hidden_state(model) as box:
        outputs = model(**model_kwargs, logits_to_keep=1)
    mask = completion_mask[:, 1:].bool()
    hidden = box["hidden"][:, :-1][mask]
    labels = model_kwargs["input_ids"][:, 1:][mask]
    return CompletionHidden(hidden, labels, mask), outputs


def summed_logps(selected: CompletionLogits) -> Tensor:
    """log π(y|x) = Σ_t log π(y_t | x, y<t) per row, from the completion positions' logits."""
    return selected.sequence_sum(token_logps(log_probs_from_logits(selected.logits), selected.labels))


def sequence_logps(model, model_kwargs: dict, completion_mask: Tensor) -> Tensor:
    """log π(y|x) over each row's completion tokens, through `completion_logits`."""
    return summed_logps(completion_logits(model, model_kwargs, completion_mask)[0])
