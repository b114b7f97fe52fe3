"""The objective head, a block of positions at a time: per-position log π(y_t) and, for token-level DPO,
KL(π_ref ‖ π_θ), from hidden states and the LM head, never holding (positions × vocabulary) logits.

For N completion positions with hidden states h (N, d) and an LM head W (V, d), bias b, the logits are
z = transform(h Wᵀ + b), with the model's own logit scaling and soft-capping (`LogitTransform`). Per position:

    log π(y_t) = z_t[y_t] − logsumexp(z_t)
    KL_t = Σ_v π_ref(v) (log π_ref(v) − log π_θ(v))        (π_ref from the reference's own hidden states and head)

and the statistics TRL logs (entropy −Σ_v π log π, the mean logit, whether y_t is the argmax). Forward and backward
each take `block_size` positions at a time; backward recomputes the block's logits and applies the exact gradients,

    ∂ log π(y_t)/∂z_t = onehot(y_t) − π_θ,      ∂ KL_t/∂z_t = π_θ − π_ref,

so memory holds h, the head and one block's (block_size × V) logits, however many positions there are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# About four float32 (block × vocabulary) tensors are alive at once: logits, log-probs, probabilities, gradient.
DEFAULT_BLOCK_BUDGET_BYTES = 256 * 2**20


def auto_block_size(vocab_size: int, budget_bytes: int = DEFAULT_BLOCK_BUDGET_BYTES) -> int:
    """The largest power of two of positions whose four float32 (block × V) tensors fit `budget_bytes`, in [16, 4096]:
    256 positions at V = 49,152, 128 at V = 131,072, 64 at V = 262,144."""
    rows = budget_bytes // (4 * 4 * vocab_size)
    return int(min(4096, max(16, 2 ** math.floor(math.log2(max(rows, 1))))))


@dataclass(frozen=True)
class LogitTransform:
    """What a model does to `h Wᵀ + b` before its logits: z = cap · tanh(s · raw / cap) (`scale` s, `softcap` cap;
    no tanh when `softcap` is None), as transformers models with `logit_scale` or `final_logit_softcapping` do."""

    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, config) -> LogitTransform:
        """The transform a model's config describes (`logit_scale` / `output_multiplier` / `lm_head_multiplier`,
        `logits_scaling` as a divisor, `final_logit_softcapping`)."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        scale = next(
            (
                getattr(text, name)
                for name in ("logit_scale", "output_multiplier", "lm_head_multiplier")
                if getattr(text, name, None) is not None
            ),
            None,
        )
        if scale is None and getattr(text, "logits_scaling", None) is not None:
            scale = 1.0 / text.logits_scaling
        return cls(1.0 if scale is None else float(scale), getattr(text, "final_logit_softcapping", None))

    def __call__(self, raw: Tensor) -> Tensor:
        z = raw * self.scale if self.scale != 1.0 else raw
        return self.softcap * torch.tanh(z / self.softcap) if self.softcap else z

    def backward(self, grad: Tensor, z: Tensor) -> Tensor:
        """∂L/∂raw from ∂L/∂z and z = self(raw)."""
        if self.softcap:
            grad = grad * (1.0 - (z / self.softcap) ** 2)
        return grad * self.scale if self.scale != 1.0 else grad


class Head(NamedTuple):
    """An LM head: `weight` (V, d), `bias` (V,) or None, and the model's `transform` of its output."""

    weight: Tensor
    bias: Tensor | None
    transform: LogitTransform

    def logits(self, hidden: Tensor) -> Tensor:
        """z = transform(hidden Wᵀ + b) in float32; the projection runs in the ambient autocast dtype, as the
        model's own head does."""
        return self.transform(F.linear(hidden, self.weight, self.bias).float())


class PerPosition(NamedTuple):
    """Per-position results (N,): log π_θ(y_t), KL(π_ref ‖ π_θ) and log π_ref(y_t) (zero without a reference), and
    the logged statistics of π_θ (no gradient)."""

    logps: Tensor
    kl: Tensor
    ref_logps: Tensor
    entropy: Tensor
    mean_logits: Tensor
    is_top1: Tensor


def chunked_head(
    hidden: Tensor,
    labels: Tensor,
    head: Head,
    block_size: int,
    ref_hidden: Tensor | None = None,
    ref_head: Head | None = None,
) -> PerPosition:
    """`PerPosition` of the N positions whose hidden states are `hidden` (N, d) and next tokens `labels` (N,), under
    `head`, `block_size` positions at a time; with `ref_hidden` (N, d_ref) and `ref_head` also the KL to the reference
    (whose hidden states get no gradient). Differentiable in `hidden`, `head.weight` and `head.bias`."""
    if (ref_hidden is None) != (ref_head is None):
        raise ValueError("chunked_head needs ref_hidden and ref_head together, or neither.")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    reference = () if ref_head is None else (ref_hidden.detach(), ref_head.weight.detach(), _detached(ref_head.bias))
    return PerPosition(
        *_ChunkedHead.apply(
            hidden,
            head.weight,
            head.bias,
            labels,
            head.transform,
            block_size,
            ref_head.transform if ref_head is not None else None,
            *reference,
        )
    )


def _detached(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach()


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _ChunkedHead(torch.autograd.Function):
    """Forward and backward of `chunked_head`, block by block (see the module docstring for the equations)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, transform, block_size, ref_transform, *reference):
        n = hidden.size(0)
        outputs = [torch.zeros(n, device=hidden.device, dtype=torch.float32) for _ in range(5)]
        logps, kl, ref_logps, entropy, mean_logits = outputs
        is_top1 = torch.zeros(n, device=hidden.device, dtype=torch.bool)
        autocast = _autocast_state(hidden.device.type)
        with torch.no_grad():
            head, ref_head = _heads_cast_once(autocast, Head(weight, bias, transform), reference, ref_transform)
            for start in range(0, n, block_size):
                rows = slice(start, min(start + block_size, n))
                z = head.logits(hidden[rows])
                log_probs = torch.log_softmax(z, dim=-1)
                block_labels = labels[rows].unsqueeze(-1)
                logps[rows] = log_probs.gather(-1, block_labels).squeeze(-1)
                entropy[rows] = -(log_probs.exp() * log_probs).sum(-1)
                mean_logits[rows] = z.mean(-1)
                is_top1[rows] = z.argmax(-1) == labels[rows]
                if ref_head is not None:
                    ref_log_probs = torch.log_softmax(ref_head.logits(reference[0][rows]), dim=-1)
                    ref_logps[rows] = ref_log_probs.gather(-1, block_labels).squeeze(-1)
                    kl[rows] = (ref_log_probs.exp() * (ref_log_probs - log_probs)).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, *reference)
        ctx.transform, ctx.ref_transform, ctx.block_size = transform, ref_transform, block_size
        ctx.has_bias, ctx.has_reference = bias is not None, bool(reference)
        ctx.autocast = autocast
        ctx.mark_non_differentiable(ref_logps, entropy, mean_logits, is_top1)
        return logps, kl, ref_logps, entropy, mean_logits, is_top1

    @staticmethod
    def backward(ctx, grad_logps, grad_kl, *_):
        hidden, weight, bias, labels, *reference = ctx.saved_tensors
        if not ctx.has_bias:
            bias = None
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_bias and bias is not None else None
        enabled, dtype = ctx.autocast
        n = hidden.size(0)
        with torch.no_grad(), torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):
            head, ref_head = _heads_cast_once(
                ctx.autocast, Head(weight, bias, ctx.transform), reference, ctx.ref_transform
            )
            compute = _compute_dtype(hidden, weight, enabled, dtype)
            projection = head.weight.to(compute)  # cast once; under autocast `head` is cast already (no copy)
            for start in range(0, n, ctx.block_size):
                rows = slice(start, min(start + ctx.block_size, n))
                z = head.logits(hidden[rows])
                probs = torch.softmax(z, dim=-1)
                grad_z = torch.zeros_like(z)
                if grad_logps is not None:
                    grad_z -= grad_logps[rows, None] * probs  # ∂ log π(y)/∂z = onehot(y) − π_θ
                    grad_z.scatter_add_(-1, labels[rows, None], grad_logps[rows, None])
                if grad_kl is not None and ctx.has_reference:
                    ref_probs = torch.softmax(ref_head.logits(reference[0][rows]), dim=-1)
                    grad_z += grad_kl[rows, None] * (probs - ref_probs)  # ∂ KL/∂z = π_θ − π_ref
                grad_raw = ctx.transform.backward(grad_z, z)
                if grad_hidden is not None:
                    grad_hidden[rows] = (grad_raw.to(compute) @ projection).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (grad_raw.to(compute).t() @ hidden[rows].to(compute)).float()
                if grad_bias is not None:
                    grad_bias += grad_raw.sum(0)
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, *([None] * len(reference))


def _heads_cast_once(autocast: tuple[bool, torch.dtype], head: Head, reference: tuple, ref_transform):
    """The policy's head and the reference's (None without one) with their weights cast to the autocast dtype once
    for all blocks: autocast would cast a weight that needs no gradient again at every block's projection, and the
    values are the same. A reference head that is the policy's own (a LoRA policy with its adapters off) shares
    the cast. Without autocast, the heads as they are."""
    enabled, dtype = autocast
    ref_head = Head(reference[1], reference[2], ref_transform) if reference else None
    if not enabled:
        return head, ref_head

    def cast(tensor: Tensor | None) -> Tensor | None:
        return tensor.to(dtype) if tensor is not None and tensor.is_floating_point() else tensor

    cast_head = Head(cast(head.weight), cast(head.bias), head.transform)
    if ref_head is None:
        return cast_head, None
    if _same_tensor(ref_head.weight, head.weight) and _same_tensor(ref_head.bias, head.bias):
        return cast_head, Head(cast_head.weight, cast_head.bias, ref_transform)
    return cast_head, Head(cast(ref_head.weight), cast(ref_head.bias), ref_transform)


def _same_tensor(a: Tensor | None, b: Tensor | None) -> bool:
    """Whether `a` and `b` are views of the same values (a detached or saved tensor is another object)."""
    if a is None or b is None:
        return a is b
    return (a.data_ptr(), a.shape, a.stride(), a.dtype) == (b.data_ptr(), b.shape, b.stride(), b.dtype)


def _compute_dtype(hidden: Tensor, weight: Tensor, autocast_enabled: bool, autocast_dtype: torch.dtype):
    """The dtype the forward projection ran in: the autocast dtype under autocast, else the inputs'."""
    return autocast_dtype if autocast_enabled else torch.promote_types(hidden.dtype, weight.dtype)


def head_of(model) -> tuple[Head | None, str | None]:
    """`model`'s LM head as a `Head` (FSDP's sharded weight gathered, as TRL's fused head does), or None and why it
    cannot take the chunked path: adapters on the head, a head that is not a plain linear layer, or weights that
    DeepSpeed ZeRO-3 partitions."""
    from accelerate.utils import extract_model_from_parallel
    from torch.distributed.tensor import DTensor

    unwrapped = extract_model_from_parallel(model)
    head = unwrapped.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or type(head).__module__.startswith(("peft", "bitsandbytes")):
        return (
            None,
            f"its LM head is a {type(head).__name__} (adapters or quantization on lm_head), not a plain linear layer",
        )
    weight, bias = head.weight, head.bias
    if hasattr(weight, "ds_shape"):
        return None, "DeepSpeed ZeRO-3 partitions its LM head"
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
        bias = bias.full_tensor() if isinstance(bias, DTensor) else bias
    return Head(weight, bias, LogitTransform.of(unwrapped.config)), None


@torch.no_grad()
def head_matches_model(model, head: Head, model_kwargs: dict, context, tolerance: float = 1e-3) -> bool:
    """Whether `head` reproduces the logits `model` computes itself, at the last position of the batch's first row:
    the check that the model's forward is `lm_head(decoder(...))` plus the `LogitTransform`, done once per model."""
    from accelerate.utils import extract_model_from_parallel

    from .logprobs import last_hidden_state

    unwrapped = extract_model_from_parallel(model)
    first_row = {
        key: value[:1] if torch.is_tensor(value) and value.dim() > 0 else value for key, value in model_kwargs.items()
    }
    with context(), last_hidden_state(unwrapped) as box:
        own = unwrapped(**first_row, logits_to_keep=1).logits[:, -1].float()
        ours = head.logits(box["hidden"][:, -1])
    return bool(torch.allclose(ours, own, atol=tolerance * max(own.abs().max().item(), 1.0), rtol=0))
