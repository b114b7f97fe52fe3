"""A mixed-precision reference at a byte budget: each linear layer of π_ref in NF4, int8 or full precision, chosen
from how far that layer alone moves the reference's completion log-probs.

The sensitivity of layer m in precision p (NF4 or int8), on calibration batches of the training data, is

    s(m, NF4) = mean over completions y of |log π_ref(y) with m alone in NF4 − log π_ref(y)|,     s(m, full) = 0,

one forward of the calibration batches per layer; int8's is scaled from it by the weights' relative rounding error,
s(m, int8) = s(m, NF4) · ‖W − Q_int8(W)‖ / ‖W − Q_nf4(W)‖ (the log-probs move in proportion to the weight error
for errors this small), which halves the forwards.

The plan starts with every layer in NF4 and, while the budget lasts, takes the upgrade (to int8 or to full
precision) with the largest drop in s per extra byte, counting the layers' errors as additive. What the finished
reference really differs by is measured afterwards, as for any quantized reference (`reference.quantization_gap`).

Bytes of a layer with n = out × in weights: NF4 n/2 + 4n/64 (a float32 absmax per block of 64 weights), int8
n + 4·out (a float32 scale per row), full precision n × the weights' element size; its bias in full precision.

The LM head and the input embeddings are not quantized (as transformers leaves them); when the reference runs under
bf16 autocast they are held in bfloat16 (`hold_embeddings_in_bf16`). That is free for the LM head, whose product
autocast computes in bf16 from a bf16 copy of its weight anyway, and rounds the input embeddings' values by at most
2⁻⁹ relative; a tied embedding of a small model is a fifth of its bytes (SmolLM2-135M: 113 of 538 MB).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..data.assets import cache_dir
from ..objectives.logprobs import completion_logits, log_probs_from_logits, token_logps
from ..utils.atomic import write_json
from ..utils.errors import ConfigError
from ..utils.quiet import quiet_int8_cast_warning

logger = logging.getLogger("dpo_plugin")

NF4, INT8, FULL = "nf4", "int8", "full"
PRECISIONS = (NF4, INT8, FULL)
NF4_BLOCK = 64
INT8_THRESHOLD = 6.0  # LLM.int8's outlier threshold, transformers' default for load_in_8bit


def quantizable_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers a bitsandbytes reference quantizes, by name: every `nn.Linear` except the LM head."""
    head = model.get_output_embeddings()
    return {
        name: module
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module is not head  # exactly nn.Linear: not a bitsandbytes layer already
    }


def layer_bytes(layer: nn.Linear, precision: str) -> int:
    """Bytes `layer` holds in `precision` (see the module docstring)."""
    n = layer.weight.numel()
    bias = layer.bias.numel() * layer.bias.element_size() if layer.bias is not None else 0
    if precision == NF4:
        return n // 2 + 4 * -(-n // NF4_BLOCK) + bias
    if precision == INT8:
        return n + 4 * layer.out_features + bias
    return n * layer.weight.element_size() + bias


def embedding_tables(model: nn.Module) -> list[nn.Module]:
    """The input embedding and, unless it is tied to it, the LM head: what `hold_embeddings_in_bf16` halves."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is None or head.weight is embedding.weight
    return [embedding] if tied else [embedding, head]


def bf16_embedding_saving(model: nn.Module) -> int:
    """Bytes freed by holding `embedding_tables(model)`'s weights in bfloat16 (0 where they already take 2 bytes)."""
    return sum(t.weight.numel() * (t.weight.element_size() - 2) for t in embedding_tables(model))


def hold_embeddings_in_bf16(model: nn.Module) -> None:
    """Store the input embedding and LM head weights (one tensor when tied) in bfloat16, in place; the embedding's
    output is cast back to the dtype it had, so the residual stream keeps its precision. Only for a model that runs
    under bf16 autocast (the LM head then computes in bf16, as it did)."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    dtype = embedding.weight.dtype
    tied = head is not None and head.weight is embedding.weight
    for table in embedding_tables(model):
        table.weight = nn.Parameter(table.weight.detach().to(torch.bfloat16), requires_grad=False)
    if tied:
        head.weight = embedding.weight
    embedding.register_forward_hook(partial(_cast_output, dtype=dtype))


def _cast_output(module: nn.Module, args: tuple, output: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return output.to(dtype)


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of `model` as they are stored now (a full-precision model's size)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def quantized_layer(layer: nn.Linear, precision: str, compute_dtype: torch.dtype) -> nn.Module:
    """A bitsandbytes layer holding `layer`'s weights in `precision` (NF4 `Linear4bit`, LLM.int8 `Linear8bitLt`),
    frozen, on `layer`'s device; `layer` itself for full precision."""
    if precision == FULL:
        return layer
    import bitsandbytes as bnb

    device, bias = layer.weight.device, layer.bias is not None
    with torch.device("meta"):
        if precision == NF4:
            new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias, compute_dtype, quant_type=NF4)
        else:
            new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias, False, INT8_THRESHOLD)
    weight = layer.weight.detach().to("cpu")
    if precision == NF4:
        new.weight = bnb.nn.Params4bit(
            weight, False, quant_type=NF4, blocksize=NF4_BLOCK, compress_statistics=False, module=new
        )
    else:
        quiet_int8_cast_warning()
        new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if bias:
        new.bias = nn.Parameter(layer.bias.detach().to("cpu"), requires_grad=False)
    return new.to(device).eval().requires_grad_(False)  # moving the weights is what quantizes them


@contextlib.contextmanager
def swapped(model: nn.Module, name: str, replacement: nn.Module):
    """`model` with its submodule `name` replaced by `replacement` while the block runs."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    original = getattr(parent, child)
    setattr(parent, child, replacement)
    try:
        yield
    finally:
        setattr(parent, child, original)


Batches = list[tuple[dict, torch.Tensor]]  # (model_kwargs, completion_mask), as the trainer's batches are


@torch.no_grad()
def completion_logps(model: nn.Module, context: Callable[[], AbstractContextManager], batches: Batches) -> torch.Tensor:
    """log π(y) of every completion in `batches` under `model` (run inside `context()`), concatenated."""
    logps = []
    for model_kwargs, completion_mask in batches:
        with context():
            selected, _ = completion_logits(model, model_kwargs, completion_mask)
        logps.append(selected.sequence_sum(token_logps(log_probs_from_logits(selected.logits), selected.labels)))
    return torch.cat(logps).cpu()


@torch.no_grad()
def sensitivities(
    model: nn.Module,
    context: Callable[[], AbstractContextManager],
    batches: Batches,
    compute_dtype: torch.dtype,
    progress: Callable[[Iterable], Iterable] = iter,
) -> dict[str, dict[str, float]]:
    """s(m, p) for every quantizable layer m of the full-precision `model` and p in NF4, int8, full (module
    docstring)."""
    baseline = completion_logps(model, context, batches)
    result = {}
    for name, layer in progress(list(quantizable_layers(model).items())):
        ratio = rounding_error(layer.weight, INT8) / rounding_error(layer.weight, NF4)
        with swapped(model, name, quantized_layer(layer, NF4, compute_dtype)):
            moved = (completion_logps(model, context, batches) - baseline).abs().mean().item()
        result[name] = {NF4: moved, INT8: moved * ratio, FULL: 0.0}
    return result


def cached_sensitivities(
    model: nn.Module,
    context: Callable[[], AbstractContextManager],
    batches: Batches,
    compute_dtype: torch.dtype,
    progress: Callable[[Iterable], Iterable] = iter,
) -> dict[str, dict[str, float]]:
    """`sensitivities`, kept as JSON in the cache folder under a digest of the model's weights, the calibration
    batches, the compute dtype and the ambient autocast, so that a rerun at another budget skips the measurement."""
    import bitsandbytes

    digest = hashlib.sha256(f"{compute_dtype} {bitsandbytes.__version__} {NF4_BLOCK}".encode())
    device = next(model.parameters()).device.type
    with context():
        digest.update(f"{torch.get_autocast_dtype(device)} {torch.is_autocast_enabled(device)}".encode())
    for tensor in model.state_dict().values():
        digest.update(f"{tensor.shape} {tensor.float().sum().item():.8e}".encode())
    for model_kwargs, completion_mask in batches:
        for tensor in (*[v for v in model_kwargs.values() if torch.is_tensor(v)], completion_mask):
            digest.update(tensor.cpu().numpy().tobytes())
    path = cache_dir() / "sensitivity" / f"{digest.hexdigest()[:32]}.json"
    if path.is_file():
        logger.info("Layer sensitivities read from %s (same weights, calibration batches and precision).", path)
        return json.loads(path.read_text())
    result = sensitivities(model, context, batches, compute_dtype, progress)
    write_json(path, result)
    return result


def rounding_error(weight: torch.Tensor, precision: str) -> float:
    """‖W − Q(W)‖_F of bitsandbytes' NF4 (blocks of 64, float32 absmax) or LLM.int8 (a float scale per row,
    W ≈ CB · SCB / 127) rounding of `weight`."""
    import bitsandbytes.functional as bnb_functional

    weight = weight.detach()
    if precision == INT8:
        codes, scales, _ = bnb_functional.int8_vectorwise_quant(weight.to(torch.float16))
        restored = codes.float() * scales.float()[:, None] / 127
    else:
        packed, state = bnb_functional.quantize_4bit(
            weight, blocksize=NF4_BLOCK, compress_statistics=False, quant_type=NF4
        )
        restored = bnb_functional.dequantize_4bit(packed, state)
    return (weight.float() - restored.float()).norm().item()


@dataclass
class MixedPlan:
    """Which precision each quantizable layer gets (`precisions`), the reference's bytes under it (`bytes`), the
    full-precision reference's (`full_bytes`), the additive sensitivity estimate of its gap (`estimated_gap`), and
    whether the embeddings and LM head are held in bfloat16 (`bf16_embeddings`)."""

    precisions: dict[str, str]
    bytes: int
    full_bytes: int
    estimated_gap: float
    bf16_embeddings: bool = False

    def counts(self) -> dict[str, int]:
        return {precision: list(self.precisions.values()).count(precision) for precision in PRECISIONS}

    def describe(self) -> str:
        counts = ", ".join(f"{n} {p.upper() if p != FULL else 'full precision'}" for p, n in self.counts().items())
        tables = "bfloat16" if self.bf16_embeddings else "full precision"
        return (
            f"{self.bytes / 1e6:.1f} MB, {self.bytes / self.full_bytes:.3f}× the full-precision bytes; {counts}; "
            f"embeddings and LM head in {tables}"
        )


def all_nf4_bytes(layers: dict[str, nn.Linear], full_bytes: int, saved: int = 0) -> int:
    """The smallest mixed reference: every quantizable layer in NF4, everything else as it is less `saved` bytes
    (the embeddings in bfloat16: `bf16_embedding_saving`)."""
    return full_bytes - saved - sum(layer_bytes(layer, FULL) - layer_bytes(layer, NF4) for layer in layers.values())


def check_budget(layers: dict[str, nn.Linear], full_bytes: int, budget: float, saved: int = 0) -> None:
    """ValueError when even every layer in NF4 does not fit `budget` × `full_bytes`, naming the smallest budget."""
    smallest = all_nf4_bytes(layers, full_bytes, saved) / full_bytes
    if smallest > budget:
        tables = "in bfloat16" if saved else "in full precision (bfloat16 under bf16 autocast)"
        raise ConfigError(
            f"ref_bytes_budget {budget} is below this model's smallest mixed reference: every linear layer in NF4 "
            f"takes {smallest:.3f}× the full-precision bytes (the embeddings and LM head {tables}). "
            f"Set ref_bytes_budget to at least {smallest:.3f}, or use ref_quantization: nf4."
        )


def plan_precisions(
    layers: dict[str, nn.Linear],
    sensitivity: dict[str, dict[str, float]],
    full_bytes: int,
    budget: float,
    saved: int = 0,
) -> MixedPlan:
    """The greedy plan within `budget` × `full_bytes`, `saved` bytes freed outside the linear layers (module
    docstring); `check_budget` first."""
    check_budget(layers, full_bytes, budget, saved)
    precisions = dict.fromkeys(layers, NF4)
    spent = all_nf4_bytes(layers, full_bytes, saved)
    while True:
        best = None
        for name, layer in layers.items():
            current = precisions[name]
            for upgrade in PRECISIONS[PRECISIONS.index(current) + 1 :]:
                extra = layer_bytes(layer, upgrade) - layer_bytes(layer, current)
                gain = sensitivity[name][current] - sensitivity[name][upgrade]
                if spent + extra <= budget * full_bytes and gain > 0 and (best is None or gain / extra > best[0]):
                    best = (gain / extra, name, upgrade, extra)
        if best is None:
            break
        _, name, upgrade, extra = best
        precisions[name], spent = upgrade, spent + extra
    estimate = sum(sensitivity[name][precision] for name, precision in precisions.items())
    return MixedPlan(precisions, spent, full_bytes, estimate, bf16_embeddings=saved > 0)


def quantize_to_plan(model: nn.Module, plan: MixedPlan, compute_dtype: torch.dtype) -> None:
    """Replace, in place, each layer of `model` that `plan` puts in NF4 or int8 by its bitsandbytes layer, and hold
    the embeddings in bfloat16 where the plan says so."""
    if plan.bf16_embeddings:
        hold_embeddings_in_bf16(model)
    layers = quantizable_layers(model)
    for name, precision in plan.precisions.items():
        if precision != FULL:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, quantized_layer(layers[name], precision, compute_dtype))
