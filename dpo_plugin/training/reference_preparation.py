"""The reference prepared beside the trainer, before the first step: the settings no reference can take refused,
a mixed plan measured on training batches and applied, a quantized reference's gap to full precision measured, and
the report a run saves. `PreferenceTrainer.__init__` makes one call, `prepare_reference`, once TRL has tokenized the
data and accelerate has placed the models.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from functools import partial
from typing import NamedTuple

import torch
from accelerate.utils import extract_model_from_parallel, is_peft_model
from tqdm.auto import tqdm

from ..data.assets import resolve_model
from ..objectives.reader import Context, model_inputs
from ..trl_private import get_config_model_id
from ..utils.errors import ConfigError
from ..utils.modes import in_eval_mode
from .interruption import Interrupted, StopSignals
from .mixed_reference import (
    NF4,
    Batches,
    bf16_embedding_saving,
    cached_sensitivities,
    check_budget,
    model_bytes,
    plan_precisions,
    quantizable_layers,
    quantize_to_plan,
)
from .reference import ADAPTERS_OFF, CHECKPOINT, INITIAL_POLICY, MIXED, Reference, load_reference, quantization_gap

logger = logging.getLogger("dpo_plugin")


def check_reference_settings(args) -> None:
    """`ConfigError` for a quantized reference under FSDP or DeepSpeed ZeRO-3, which shard and re-wrap it (before
    anything is loaded)."""
    if args.ref_quantization == "none":
        return
    zero3 = args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3
    if zero3 or args.fsdp:
        raise ConfigError(
            "A quantized reference cannot be sharded by FSDP or DeepSpeed ZeRO-3 (bitsandbytes' packed 4-bit and "
            "8-bit weights are not shardable parameters). Use DDP or ZeRO-1/2, or set ref_quantization: none."
        )


def warn_lora_with_separate_reference(reference: Reference, args) -> None:
    """A LoRA policy's reference is free (its base, adapters off): say what a separate quantized copy costs."""
    if reference.kind == CHECKPOINT and args.ref_model_name_or_path is None and args.ref_quantization != "none":
        logger.warning(
            "LoRA policy with ref_quantization: %s. Its reference was free already (the base with the adapters "
            "off); this loads a second, %s copy (%.0f MB more) that is also off the base by the quantization "
            "gap. To save memory with LoRA, quantize the base instead (load_in_4bit: true, QLoRA, as in "
            "recipes/qlora_dpo.yaml) and keep ref_quantization: none.",
            args.ref_quantization,
            args.ref_quantization.upper(),
            reference.model.get_memory_footprint() / 1e6,
        )


@dataclass
class TrainingBatches:
    """Training batches as the trainer collates them (`collate` over rows of the tokenized `dataset`), on `device`,
    as `(model_kwargs, completion_mask)`: the first or the last `count` of them (fewer if the data ends)."""

    dataset: object
    collate: object
    batch_size: int
    device: torch.device

    def first(self, count: int) -> Batches:
        return self._from(0, count)

    def last(self, count: int) -> Batches:
        return self._from(len(self.dataset) - count * self.batch_size, count)

    def _from(self, first: int, count: int) -> Batches:
        n = len(self.dataset)
        rows = self.dataset.select(range(min(max(first, 0), n), min(first + count * self.batch_size, n)))
        rows = rows.remove_columns([c for c in rows.column_names if c in ("ref_chosen_logps", "ref_rejected_logps")])
        batches = []
        for start in range(0, len(rows), self.batch_size):
            batch = self.collate([rows[i] for i in range(start, min(start + self.batch_size, len(rows)))])
            batch = {key: value.to(self.device) for key, value in batch.items()}
            batches.append((model_inputs(batch), batch["completion_mask"]))
        return batches


class PreparedReference(NamedTuple):
    """The reference as it trains, the report a run saves (`metrics.json`: checkpoint, quantization, memory, and
    where measured the mixed plan and the gap), and the gap's `ref/` values for the first training log entry."""

    reference: Reference
    report: dict
    logged: dict[str, float]


def prepare_reference(
    reference: Reference,
    batches: TrainingBatches,
    *,
    policy: torch.nn.Module,
    tokenizer,
    autocast: Context,
    reference_context: Context,
    calibration_batches: int,
    gap_batches: int,
    progress: bool = True,
    stop: StopSignals | None = None,
) -> PreparedReference:
    """Prepare a reference loaded from a checkpoint (`Reference.kind == "checkpoint"`) for training.

    A mixed reference with no plan yet is planned on the last `calibration_batches` training batches and quantized in
    place (`_plan_mixed_reference`); a quantized one then has its gap to full precision measured on the first
    `gap_batches` (0: not measured) and logged once. `reference_context` is what every reference pass runs inside,
    `autocast` the policy's precision, `policy` the (unwrapped) policy as it starts. Once `stop` has received
    SIGTERM/SIGINT, the calibration stops at its next layer (`Interrupted`).
    """
    quantization = reference.quantization
    if quantization.mode == MIXED and quantization.plan is None:
        calibration = batches.last(calibration_batches)
        plan = _plan_mixed_reference(reference, calibration, reference_context, progress, stop)
        reference = dataclasses.replace(reference, quantization=dataclasses.replace(quantization, plan=plan))
    model = extract_model_from_parallel(reference.model)
    report = {
        "checkpoint": reference.checkpoint,
        "quantization": reference.quantization.mode,
        "memory_bytes": model.get_memory_footprint(),
    }
    plan = reference.quantization.plan
    if plan is not None:
        report["plan"] = {
            "bytes": plan.bytes,
            "full_precision_bytes": plan.full_bytes,
            "estimated_gap": plan.estimated_gap,
            "layers": plan.precisions,
            "bf16_embeddings": plan.bf16_embeddings,
        }
    logged = {}
    if reference.quantization.mode != "none" and gap_batches > 0:
        gap = _gap_to_full_precision(
            reference, batches.first(gap_batches), policy, tokenizer, autocast, reference_context
        )
        report["gap"], logged = asdict(gap), gap.metrics()
        logger.info(
            "Quantized reference (%s) against full precision over %d training completions: "
            "|Δ log π_ref(y)| mean %.3f, max %.3f; per-token KL %.5f nats. Implicit rewards start off zero by "
            "about this much.",
            reference.quantization.mode.upper(),
            gap.sequences,
            gap.logp_abs_diff_mean,
            gap.logp_abs_diff_max,
            gap.token_kl_mean,
        )
    return PreparedReference(reference, report, logged)


def _plan_mixed_reference(
    reference: Reference, batches: Batches, reference_context: Context, progress: bool, stop: StopSignals | None
):
    """Measure each linear layer's sensitivity on `batches` (or read it from the cache, for the same weights and
    batches), plan NF4 / int8 / full precision within the budget (`mixed_reference.py`; under bf16 autocast with
    the embeddings and LM head in bfloat16), and quantize the (full-precision) reference to the plan in place;
    `Interrupted` before the next layer once `stop` has received a signal (nothing is cached or quantized)."""
    quantization = reference.quantization
    model = extract_model_from_parallel(reference.model)
    layers, full_bytes = quantizable_layers(model), model_bytes(model)
    device_type = next(model.parameters()).device.type
    with reference_context():
        bf16_autocast = (
            torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16
        )
    saved = bf16_embedding_saving(model) if bf16_autocast else 0
    check_budget(layers, full_bytes, quantization.bytes_budget, saved)
    dtype = quantization.torch_compute_dtype
    bar = partial(tqdm, desc="Reference layers' sensitivity", disable=not progress, leave=False)

    def layers_until_stopped(layers):
        for layer in bar(layers):
            if stop is not None and stop.received is not None:
                raise Interrupted(stop.received, "the mixed reference's calibration")
            yield layer

    sensitivity = cached_sensitivities(model, reference_context, batches, dtype, layers_until_stopped)
    plan = plan_precisions(layers, sensitivity, full_bytes, quantization.bytes_budget, saved)
    quantize_to_plan(model, plan, dtype)
    most = sorted(layers, key=lambda name: sensitivity[name][NF4], reverse=True)[:3]
    logger.info(
        "Mixed-precision reference within %.3f of the full-precision bytes: %s. Most sensitive in NF4: %s.",
        quantization.bytes_budget,
        plan.describe(),
        ", ".join(f"{name} ({sensitivity[name][NF4]:.3f} nats, now {plan.precisions[name]})" for name in most),
    )
    return plan


def _gap_to_full_precision(reference, batches: Batches, policy, tokenizer, autocast: Context, reference_context):
    """`quantization_gap` of the quantized reference against full precision on `batches`: the policy as it starts
    (adapters off for PEFT) when the reference is the policy's checkpoint, else that checkpoint loaded in full
    precision for the measurement only."""
    quantized = (reference.model, reference_context)
    if reference.checkpoint != resolve_model(get_config_model_id(policy.config)):
        full = load_reference(reference.checkpoint, policy, tokenizer, device=next(policy.parameters()).device)
        return quantization_gap((full, autocast), quantized, batches)
    as_it_starts = Reference(policy, ADAPTERS_OFF if is_peft_model(policy) else INITIAL_POLICY)
    with in_eval_mode(policy):
        return quantization_gap((policy, lambda: as_it_starts.context(autocast)), quantized, batches)
