"""Frozen weights handed to autocast in its precision while training, so autocast does not cast them at every use.

Under autocast, `F.linear(x, W)` runs in the low precision with a copy of W cast for that call; torch keeps such a
copy for the rest of the autocast context only for a weight that requires grad, so a frozen weight (a LoRA policy's
base, which is also its reference) is cast anew in the policy's forward and again in the reference's, every step.
While `train()` runs, each such layer computes under autocast with a low-precision copy of its weight made once, the
very tensor autocast would have made: the same products to the bit, one cast per weight per run instead of two per
step, and no more memory at the peak (the policy's backward kept every cast copy alive anyway). Outside autocast the
layer uses its own float weight; the weights are never modified.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from peft.tuners.tuners_utils import BaseTunerLayer


def frozen_linears(model: torch.nn.Module, dtype: torch.dtype) -> list[torch.nn.Linear]:
    """The plain `nn.Linear` layers of `model` whose weight is frozen, floating-point and not `dtype` already: not an
    LM head or a weight tied to one (the chunked head casts the head itself), not part of a PEFT adapter (small, and
    PEFT casts their inputs itself), not quantized (its own class)."""
    unwrapped = extract_model_from_parallel(model)
    heads = {id(unwrapped.get_output_embeddings().weight), id(unwrapped.get_input_embeddings().weight)}
    adapters = {id(part) for module in unwrapped.modules() for part in _adapter_modules(module)}
    return [
        module
        for module in unwrapped.modules()
        if type(module) is torch.nn.Linear
        and id(module.weight) not in heads
        and id(module) not in adapters
        and not module.weight.requires_grad
        and module.weight.is_floating_point()
        and module.weight.dtype != dtype
    ]


def _adapter_modules(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The adapter modules of a PEFT tuner layer (everything in it but its `base_layer`); none for other modules."""
    if isinstance(module, BaseTunerLayer):
        for name, child in module.named_children():
            if name != "base_layer":
                yield from child.modules()


@contextlib.contextmanager
def frozen_weights_cast(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[int]:
    """Inside the block, each of `frozen_linears(model, dtype)` computes with a frozen `dtype` copy of its weight
    whenever `dtype` autocast is on where it runs, and with its own float weight otherwise (a callback that samples
    or scores outside autocast mid-training sees the model as it is); the block gets how many layers. The weights
    themselves are never touched: each layer's `forward` is patched for the block and restored however it ends."""
    layers = frozen_linears(model, dtype)
    for layer in layers:
        layer.forward = functools.partial(_linear_with_held_weight, layer, layer.weight.detach().to(dtype))
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward


def _linear_with_held_weight(layer: torch.nn.Linear, held: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """`layer(input)`, with `held` (its weight in the low precision) in place of its weight where autocast would
    cast the weight to exactly that: the same product to the bit."""
    device = input.device.type
    autocast_to_held = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == held.dtype
    return F.linear(input, held if autocast_to_held else layer.weight, layer.bias)
