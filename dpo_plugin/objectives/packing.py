"""Shared-prompt packing: one row per pair, `[prompt | chosen | rejected]`, so the prompt is encoded once.

TRL's batch holds each prompt twice, in `[chosen; rejected]` rows padded to the longest. Packed, the rejected
completion continues from the prompt's position and, through a 4-D attention mask, sees the prompt and itself but
never the chosen completion:

    positions  0 … p−1 | p … p+c−1 | p … p+r−1
    prompt  attends causally to the prompt; chosen to prompt + earlier chosen; rejected to prompt + earlier rejected

so each completion token gets exactly the logits it gets in its own row. The first token of both completions is
predicted from the last prompt position. `completion_logits_shared_prompt` returns the same `CompletionLogits` as
`logprobs.completion_logits` (same positions, same order), so everything downstream is unchanged.
"""

from __future__ import annotations

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor

from .logprobs import CompletionHidden, CompletionLogits, completion_hidden, completion_logits, last_hidden_state

# Model families whose attention takes a prepared 4-D mask and explicit position ids as the packing needs (their
# transformers code shares Llama's attention). Others fall back to the plain path.
SHARED_PROMPT_MODEL_TYPES = ("llama", "qwen2", "qwen3")
SHARED_PROMPT_ATTENTION = ("sdpa", "eager")


def supports_shared_prompt(model) -> bool:
    """Whether `model`'s architecture and attention implementation can run the packed rows (DDP/FSDP/DeepSpeed
    wrappers are looked through)."""
    config = extract_model_from_parallel(model).config
    return config.model_type in SHARED_PROMPT_MODEL_TYPES and config._attn_implementation in SHARED_PROMPT_ATTENTION


def pack_pairs(input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> dict | None:
    """The packed batch of a right-padded `[chosen; rejected]` batch, or None when it cannot be packed.

    Returns `input_ids`, `position_ids`, the boolean 4-D `mask` (B, 1, L, L; True = may attend), and the packed
    (row, column) of the position that predicts each completion token, in the plain path's order (`rows`, `columns`).
    None when a pair's two prompts differ, a row has no prompt token or no completion token, or the padding is not
    on the right of one contiguous prompt + completion.
    """
    pairs = input_ids.size(0) // 2
    lengths = attention_mask.sum(1)
    prompt_lengths = (completion_mask.cumsum(1) == 0).sum(1)
    completion_lengths = completion_mask.sum(1)
    positions = torch.arange(input_ids.size(1), device=input_ids.device)
    right_padded = torch.equal(attention_mask.bool(), positions < lengths[:, None])
    contiguous = torch.equal(completion_lengths, lengths - prompt_lengths)
    if not (right_padded and contiguous) or input_ids.size(0) != 2 * pairs:
        return None
    if (prompt_lengths == 0).any() or (completion_lengths == 0).any():
        return None
    prompts, chosen_lengths, rejected_lengths = (
        prompt_lengths[:pairs],
        completion_lengths[:pairs],
        completion_lengths[pairs:],
    )
    if not torch.equal(prompts, prompt_lengths[pairs:]):
        return None
    width = int((prompts + chosen_lengths + rejected_lengths).max())
    columns = torch.arange(width, device=input_ids.device)
    packed = input_ids.new_zeros(pairs, width)
    position_ids = input_ids.new_zeros(pairs, width)
    segment = input_ids.new_full((pairs, width), -1)  # 0 prompt, 1 chosen, 2 rejected, -1 padding
    chosen_columns, rejected_columns = [], []
    for i in range(pairs):
        p, c, r = int(prompts[i]), int(chosen_lengths[i]), int(rejected_lengths[i])
        if not torch.equal(input_ids[i, :p], input_ids[pairs + i, :p]):
            return None
        packed[i, : p + c] = input_ids[i, : p + c]
        packed[i, p + c : p + c + r] = input_ids[pairs + i, p : p + r]
        position_ids[i, : p + c] = positions[: p + c]
        position_ids[i, p + c : p + c + r] = positions[p : p + r]
        segment[i, :p], segment[i, p : p + c], segment[i, p + c : p + c + r] = 0, 1, 2
        chosen_columns.append(columns[p - 1 : p + c - 1])
        rejected_columns.append(torch.cat([columns[p - 1 : p], columns[p + c : p + c + r - 1]]))
    query, key = segment[:, :, None], segment[:, None, :]
    causal = columns[:, None] >= columns[None, :]
    same_or_prompt = (key == 0) | (key == query)
    mask = causal & same_or_prompt & (query >= 0) & (key >= 0)
    mask |= torch.eye(width, dtype=torch.bool, device=mask.device)  # padding rows attend to themselves: no NaN
    rows = [torch.full_like(columns, i) for i, columns in enumerate(chosen_columns)]
    rows += [torch.full_like(columns, i) for i, columns in enumerate(rejected_columns)]
    return {
        "input_ids": packed,
        "position_ids": position_ids,
        "mask": mask[:, None],
        "rows": torch.cat(rows),
        "columns": torch.cat(chosen_columns + rejected_columns),
    }


def completion_logits_shared_prompt(model, model_kwargs: dict, completion_mask: Tensor):
    """`logprobs.completion_logits` through packed rows when the batch and model allow it, else the plain path.

    Returns `(CompletionLogits, outputs)` exactly as `completion_logits` does.
    """
    packed = _packed(model, model_kwargs, completion_mask)
    if packed is None:
        return completion_logits(model, model_kwargs, completion_mask)
    start = int(packed["columns"].min())
    outputs = model(**packed["model_kwargs"], logits_to_keep=packed["input_ids"].size(1) - start)
    logits = outputs.logits[packed["rows"], packed["columns"] - start]
    return CompletionLogits(logits, *_plain_labels_and_mask(model_kwargs, completion_mask)), outputs


def completion_hidden_shared_prompt(model, model_kwargs: dict, completion_mask: Tensor):
    """`logprobs.completion_hidden` through packed rows when the batch and model allow it, else the plain path:
    the decoder's hidden states at the positions that predict completion tokens, in the plain path's order."""
    packed = _packed(model, model_kwargs, completion_mask)
    if packed is None:
        return completion_hidden(model, model_kwargs, completion_mask)
    with last_hidden_state(model) as box:
        outputs = model(**packed["model_kwargs"], logits_to_keep=1)
    hidden = box["hidden"][packed["rows"], packed["columns"]]
    return CompletionHidden(hidden, *_plain_labels_and_mask(model_kwargs, completion_mask)), outputs


def _packed(model, model_kwargs: dict, completion_mask: Tensor) -> dict | None:
    """`pack_pairs` of the batch with the model's call arguments under `model_kwargs` (the 4-D mask in the form the
    model's attention takes), or None when the batch or the model cannot take packed rows."""
    packed = pack_pairs(model_kwargs["input_ids"], model_kwargs["attention_mask"], completion_mask)
    if packed is None or not supports_shared_prompt(model) or "output_router_logits" in model_kwargs:
        return None
    mask = packed["mask"]
    unwrapped = extract_model_from_parallel(model)
    if unwrapped.config._attn_implementation == "eager":  # eager attention adds its mask
        dtype = unwrapped.get_input_embeddings().weight.dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    packed["model_kwargs"] = {
        "input_ids": packed["input_ids"],
        "attention_mask": mask,
        "position_ids": packed["position_ids"],
        "use_cache": False,
    }
    return packed


def _plain_labels_and_mask(model_kwargs: dict, completion_mask: Tensor) -> tuple[Tensor, Tensor]:
    plain_mask = completion_mask[:, 1:].bool()
    return model_kwargs["input_ids"][:, 1:][plain_mask], plain_mask
