"""How close a DPO step runs to the machine: model FLOPs per step by a stated rule, and the machine's own dense
matmul rate in the recipe's precision, measured in the same run.

The rule, per optimizer step, with P the policy's matmul parameters outside its embeddings and LM head, P_t the
trainable ones among them (all of them, or the LoRA adapters), T the non-padding tokens of the [chosen; rejected]
rows, C the completion positions scored, V × d the LM head (h_t = 1 when it is trainable, else 0):

    policy forward   2·P·T + 2·V·d·C
    policy backward  2·P·T (activation gradients) + 2·P_t·T (weight gradients) + 2·V·d·C·(1 + h_t)
    reference        2·P·T + 2·V·d·C  (a forward, no gradient)

Attention's T² score products, norms and activations are not counted; every contender gets the same count for the
same batches, so a contender that computes less (packing, logits at completion positions only) reads higher.
"""

from __future__ import annotations

import time

import torch
from accelerate.utils import extract_model_from_parallel


def model_flops_per_step(policy, batches: list[dict]) -> float:
    """The rule's FLOPs of one optimizer step over `batches` (its micro-batches)."""
    model = extract_model_from_parallel(policy)
    head = model.get_output_embeddings().weight
    embedding = model.get_input_embeddings().weight
    outside = {id(head), id(embedding)}
    matmul = [p for p in model.parameters() if id(p) not in outside and p.dim() >= 2]
    p_all = sum(p.numel() for p in matmul)
    p_trainable = sum(p.numel() for p in matmul if p.requires_grad)
    head_size, head_trainable = head.numel(), float(head.requires_grad)
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
    positions = sum(int(batch["completion_mask"][:, 1:].sum()) for batch in batches)
    policy_flops = 2 * p_all * tokens * 2 + 2 * p_trainable * tokens + 2 * head_size * positions * (2 + head_trainable)
    reference_flops = 2 * p_all * tokens + 2 * head_size * positions
    return float(policy_flops + reference_flops)


def dense_matmul_rate(device: torch.device | str, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of `size`×`size` matrix products in `dtype` on `device`, after one warm-up product."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    (a @ b).sum().item()
    products, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        (a @ b).sum().item()  # the .item() waits for the device
        products += 1
    return 2 * size**3 * products / (time.perf_counter() - started)
