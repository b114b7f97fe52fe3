"""Reading a `[chosen; rejected]` batch: one forward per model, then log π(y) per sequence (and, for token-level DPO,
the reference's log π_ref(y) and SeqKL(y) = Σ_t KL(π_ref ‖ π_θ)), with the per-token statistics TRL logs.

A `CompletionReader` reads one of four ways, chosen once per model by `choose_reader`:

- the head: the chunked head from the decoder's hidden states (`chunked_head.py`, nothing of positions ×
  vocabulary held for backward), or full logits at completion positions (`logprobs.py`);
- the rows: shared-prompt packing, one `[prompt | chosen | rejected]` row per pair (`packing.py`, where the model
  and batch allow it), or TRL's two rows per pair.

All four give the same numbers (tests/training/test_chunked_training.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor

from .chunked_head import auto_block_size, chunked_head, head_matches_model, head_of
from .logprobs import completion_hidden, completion_logits, log_probs_from_logits, token_kl, token_logps
from .packing import completion_hidden_shared_prompt, completion_logits_shared_prompt

logger = logging.getLogger("dpo_plugin")

Context = Callable[[], AbstractContextManager]
ModelInContext = tuple[torch.nn.Module, Context]  # a model and what each of its passes runs inside
# The keys of a collated TRL batch that are not the model's call arguments.
NOT_MODEL_INPUTS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


def model_inputs(batch: dict) -> dict:
    """A collated `[chosen; rejected]` batch's model call arguments: all but `NOT_MODEL_INPUTS`, no KV cache."""
    return {key: value for key, value in batch.items() if key not in NOT_MODEL_INPUTS} | {"use_cache": False}


@dataclass
class Reading:
    """One read of a `[chosen; rejected]` batch of 2B rows.

    Per sequence (2B,): `logps` = log π_θ(y|x), and with a reference read alongside `ref_logps` = log π_ref(y|x) and
    `seq_kl` = SeqKL(y). Per token (2B, T), zero outside `mask` (True where a position predicts a completion token):
    π_θ's `entropy`, `mean_logits` and `is_top1` (its argmax is the label), without gradient. `aux_loss`: the
    model's router loss, where it has one.
    """

    logps: Tensor
    mask: Tensor
    entropy: Tensor
    mean_logits: Tensor
    is_top1: Tensor
    ref_logps: Tensor | None = None
    seq_kl: Tensor | None = None
    aux_loss: Tensor | None = None


@dataclass(frozen=True)
class CompletionReader:
    """Reads completions through the chunked head (`block_size` positions at a time) or, with `block_size` None,
    through full logits at completion positions; through shared-prompt packing when `share_prompt` is on.

    `head_context` is what the chunked head runs inside: the autocast the models' own heads run in (accelerate wraps
    a model's forward in it, not the code around it).
    """

    block_size: int | None
    share_prompt: bool
    head_context: Context = contextlib.nullcontext

    @property
    def chunked(self) -> bool:
        return self.block_size is not None

    def read(self, model, model_kwargs: dict, completion_mask: Tensor, reference: ModelInContext | None = None):
        """`Reading` of the batch under `model`; with `reference` (model, context), also the reference's log-probs
        and SeqKL, from its own forward without gradient."""
        policy, outputs = self._forward(model, model_kwargs, completion_mask)
        aux_loss = getattr(outputs, "aux_loss", None)
        ref = None
        if reference is not None:
            ref_model, ref_context = reference
            ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
            with torch.no_grad(), ref_context():
                ref, _ = self._forward(ref_model, ref_kwargs, completion_mask)
                ref_log_probs = None if self.chunked else log_probs_from_logits(ref.logits)
        if self.chunked:
            head = head_of(model)[0]  # read afresh each step: FSDP gathers its sharded weight
            against = (ref.hidden, head_of(reference[0])[0]) if ref is not None else ()
            with self.head_context():
                per = chunked_head(policy.hidden, policy.labels, head, self.block_size, *against)
            return Reading(
                logps=policy.sequence_sum(per.logps),
                mask=policy.mask,
                entropy=policy.scatter(per.entropy),
                mean_logits=policy.scatter(per.mean_logits),
                is_top1=policy.scatter(per.is_top1),
                ref_logps=policy.sequence_sum(per.ref_logps) if ref is not None else None,
                seq_kl=policy.sequence_sum(per.kl) if ref is not None else None,
                aux_loss=aux_loss,
            )
        log_probs = log_probs_from_logits(policy.logits)
        with torch.no_grad():
            detached = log_probs.detach()
            entropy = -(detached.exp() * detached).sum(dim=-1)
        return Reading(
            logps=policy.sequence_sum(token_logps(log_probs, policy.labels)),
            mask=policy.mask,
            entropy=policy.scatter(entropy),
            mean_logits=policy.scatter(policy.logits.detach().float().mean(dim=-1)),
            is_top1=policy.scatter(policy.logits.argmax(dim=-1) == policy.labels),
            ref_logps=ref.sequence_sum(token_logps(ref_log_probs, ref.labels)) if ref is not None else None,
            seq_kl=policy.sequence_sum(token_kl(ref_log_probs, log_probs)) if ref is not None else None,
            aux_loss=aux_loss,
        )

    def sequence_logps(self, model, model_kwargs: dict, completion_mask: Tensor) -> Tensor:
        """log π(y|x) per row (2B,) under `model`, no statistics: the reference's pass of a sequence-level
        objective, live or precomputed (the caller supplies no_grad and the reference's context)."""
        selected, _ = self._forward(model, model_kwargs, completion_mask)
        if not self.chunked:
            return selected.sequence_sum(token_logps(log_probs_from_logits(selected.logits), selected.labels))
        with self.head_context():
            per = chunked_head(selected.hidden, selected.labels, head_of(model)[0], self.block_size)
        return selected.sequence_sum(per.logps)

    def _forward(self, model, model_kwargs: dict, completion_mask: Tensor):
        """The model's forward keeping what the head needs at completion positions: hidden states for the chunked
        head, logits otherwise; `(CompletionHidden | CompletionLogits, outputs)`."""
        if self.chunked:
            forward = completion_hidden_shared_prompt if self.share_prompt else completion_hidden
        else:
            forward = completion_logits_shared_prompt if self.share_prompt else completion_logits
        return forward(model, model_kwargs, completion_mask)


def choose_reader(
    models: Sequence[tuple[torch.nn.Module, Context, str]],
    model_kwargs: dict,
    *,
    chunked: bool,
    block_size: int | None,
    share_prompt: bool,
    head_context: Context = contextlib.nullcontext,
) -> CompletionReader:
    """The reader for a step that reads `models`, each `(model, the context it runs in, its role for the log)`: the
    chunked head when `chunked` and every model's head reproduces the model's own logits on the batch's first row
    (`head_of`, `head_matches_model`), with `block_size` positions per block (None: `auto_block_size` of the
    vocabulary); else full logits, and one log line saying which model falls back and why."""
    full_logits = CompletionReader(None, share_prompt, head_context)
    if not chunked:
        return full_logits
    for model, context, role in models:
        head, reason = head_of(model)
        if head is not None and not head_matches_model(model, head, model_kwargs, context):
            head, reason = None, "its head and logit transform do not reproduce the model's own logits"
        if head is None:
            logger.warning(
                "The %s's objective head falls back to full logits at completion positions: %s.", role, reason
            )
            return full_logits
    vocab = extract_model_from_parallel(models[0][0]).get_output_embeddings().weight.shape[0]
    return CompletionReader(block_size or auto_block_size(vocab), share_prompt, head_context)
