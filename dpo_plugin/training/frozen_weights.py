"""Frozen weights held in the autocast precision while training, so autocast does not cast them again at every use.

Under autocast, `F.linear(x, W)` runs in the low precision with a copy of W cast for that call; torch keeps such a
copy for the rest of the autocast context only for a weight that requires grad, so a frozen weight (a LoRA policy's
base, which is also its reference) is cast anew in the policy's forward and again in the reference's, every step.
Holding those weights in the low precision while `train()` runs hands autocast the very tensor it would have made:
the same products to the bit, one cast per weight per run instead of two per step, and no more memory at the peak
(the policy's backward kept every cast copy alive anyway). The float weights are put back, untouched, when training
ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from accelerate.utils import extract_model_from_parallel
from peft.tuners.tuners_utils import BaseTunerLayer


def frozen_linears(models: Iterable[torch.nn.Module], dtype: torch.dtype) -> list[torch.nn.Linear]:
    """The plain `nn.Linear` layers of `models` whose weight is frozen, floating-point and not yet `dtype`: not an LM
    head or a weight tied to one (the chunked head casts the head itself; tied embeddings run outside autocast), not
    part of a PEFT adapter (a frozen `ref` adapter is saved with the policy's), not quantized (its own class); each
    once."""
    layers: dict[int, torch.nn.Linear] = {}
    for model in models:
        unwrapped = extract_model_from_parallel(model)
        heads = {id(unwrapped.get_output_embeddings().weight), id(unwrapped.get_input_embeddings().weight)}
        adapters = {id(part) for module in unwrapped.modules() for part in _adapter_modules(module)}
        for module in unwrapped.modules():
            if type(module) is not torch.nn.Linear or id(module.weight) in heads or id(module) in adapters:
                continue
            if module.weight.requires_grad or not module.weight.is_floating_point() or module.weight.dtype == dtype:
                continue
            layers[id(module)] = module
    return list(layers.values())


def _adapter_modules(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The adapter modules of a PEFT tuner layer (everything in it but its `base_layer`); none for other modules."""
    if isinstance(module, BaseTunerLayer):
        for name, child in module.named_children():
            if name != "base_layer":
                yield from child.modules()


@contextlib.contextmanager
def frozen_weights_cast(models: Iterable[torch.nn.Module], dtype: torch.dtype) -> Iterator[int]:
    """Inside the block, each of `frozen_linears(models, dtype)` holds a frozen `dtype` copy of its weight (the block
    gets how many); after it, however it ends, the original float `Parameter` again. For weights that are never saved
    while the block runs (a PEFT policy's base, a reference) and only used under `dtype` autocast."""
    layers = frozen_linears(models, dtype)
    originals = [layer.weight for layer in layers]
    for layer, weight in zip(layers, originals, strict=True):
        layer.weight = torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False)
    try:
        yield len(layers)
    finally:
        for layer, weight in zip(layers, originals, strict=True):
            layer.weight = weight
