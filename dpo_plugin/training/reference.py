"""The frozen reference π_ref: one type for "which network, in which context", and one function that chooses it.

TRL reloads the reference from `policy.config._name_or_path` and can only quantize policy and reference together.
Here the reference is chosen on purpose (`choose_reference`), can come from another checkpoint, and can be
quantized alone with bitsandbytes (NF4/FP4 4-bit, LLM.int8, or a mixed plan of both: `mixed_reference.py`), beside
a full-precision or LoRA policy, as one `RefQuantization` says. `quantization_gap` measures what the quantization
costs against the full-precision reference. The trainer, PPO, the benchmarks and `dpo-plugin eval` all take their
reference from `choose_reference`; the trainer prepares it further before training (`reference_preparation.py`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel, is_peft_model
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from ..data.model_folders import model_folder
from ..objectives.logprobs import completion_logits, log_probs_from_logits, token_kl, token_logps
from ..trl_private import REF_ADAPTER, get_config_model_id, use_adapter
from ..utils.atomic import write_json
from ..utils.errors import ConfigError, UserError
from ..utils.quiet import quiet_int8_cast_warning
from .mixed_reference import MixedPlan, quantize_to_plan

logger = logging.getLogger("dpo_plugin")

BNB_DEVICE_TYPES = ("cpu", "cuda")
REF_QUANTIZATIONS = ("none", "nf4", "fp4", "int8")  # one bitsandbytes quantization for the whole reference
MIXED = "mixed"  # NF4, int8 or full precision per layer (`mixed_reference.py`)
REF_PRECISIONS = (*REF_QUANTIZATIONS, MIXED)
BNB_COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
MIXED_PLAN_FILE = "mixed_reference_plan.json"  # what a run's mixed reference was, saved with its weights

# How a reference came to be (`Reference.kind`), in the order `choose_reference` tries them.
EXPLICIT, ADAPTERS_OFF, CHECKPOINT, INITIAL_POLICY, COPY = "explicit", "adapters off", "checkpoint", "initial", "copy"


@dataclass(frozen=True)
class RefQuantization:
    """How π_ref's weights are held: `mode` is one bitsandbytes quantization for the whole model (`none`, `nf4`,
    `fp4`, `int8`) or `mixed`: each linear layer in NF4, int8 or full precision, by `plan` (the plan a run used,
    rebuilt as it was), or with no plan loaded in full precision for the trainer to plan within `bytes_budget` (a
    fraction of the full-precision bytes) before training. 4-bit layers compute in `compute_dtype` (default float32)
    and, with `double_quant`, quantize their quantization constants too."""

    mode: str = "none"
    compute_dtype: str | None = None
    double_quant: bool = False
    bytes_budget: float = 1.0
    plan: MixedPlan | None = field(default=None, compare=False)

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        return getattr(torch, self.compute_dtype or "float32")


FULL_PRECISION = RefQuantization()


@dataclass
class Reference:
    """π_ref: the network to call (`model`) and how it came to be (`kind`, one of):

    - `explicit`: a model the caller passed;
    - `adapters off`: the PEFT policy itself with its adapters disabled (its "ref" adapter if it has one, as TRL
      does): no second network;
    - `checkpoint`: `checkpoint` loaded, held as `quantization` says (`RefQuantization`; mixed with no plan: loaded
      in full precision, then planned and quantized layer by layer by the trainer, which has the calibration data);
    - `initial`: the policy itself before training, for reference log-probs computed once before training
      (`precompute_ref_log_probs`): no reference is held while training;
    - `copy`: a frozen copy of the policy as it was in memory.

    `context(autocast)` is what every reference pass runs inside: `autocast()` and, for `adapters off`, the
    adapters disabled.
    """

    model: torch.nn.Module
    kind: str
    checkpoint: str | None = None
    quantization: RefQuantization = FULL_PRECISION

    @property
    def separate(self) -> bool:
        """Whether `model` is a network of its own (not the policy)."""
        return self.kind in (EXPLICIT, CHECKPOINT, COPY)

    def context(self, autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(autocast())
        if self.kind == ADAPTERS_OFF:
            policy = extract_model_from_parallel(self.model)
            stack.enter_context(use_adapter(policy, REF_ADAPTER if REF_ADAPTER in policy.peft_config else None))
        return stack

    def describe(self) -> str:
        """One line for the log."""
        if self.kind == CHECKPOINT:
            mode, plan = self.quantization.mode, self.quantization.plan
            if mode == MIXED:
                precision = f"mixed precision ({plan.describe()})" if plan else "full precision until its mixed plan"
            else:
                precision = "full precision" if mode == "none" else mode.upper()
            return f"{precision} from checkpoint {self.checkpoint!r}, {self.model.get_memory_footprint() / 1e6:.1f} MB"
        return {
            EXPLICIT: "the ref_model passed in",
            ADAPTERS_OFF: "the PEFT policy with its adapters disabled",
            COPY: f"a frozen copy of the policy passed in (checkpoint {self.checkpoint or 'built in memory'!r})",
            INITIAL_POLICY: "the policy before training; its log-probs are precomputed and no reference is held "
            "while training",
        }[self.kind]


def choose_reference(
    policy: PreTrainedModel,
    ref_model: torch.nn.Module | None = None,
    *,
    checkpoint: str | None = None,
    quantization: RefQuantization = FULL_PRECISION,
    tokenizer=None,
    device: torch.device | str | None = None,
    peft: bool | None = None,
    precomputed: bool = False,
    sharded: bool = False,
) -> Reference:
    """π_ref for `policy`, the first of these that applies:

    1. `ref_model`, when given: an explicit reference (frozen, eval mode);
    2. a PEFT policy (`peft`: it is one, or will be wrapped as one; default `is_peft_model(policy)`), when no
       `checkpoint` or `quantization` is asked for: the policy with its adapters off;
    3. a `checkpoint` or a `quantization` other than none: that checkpoint (a folder, hub id or bundled name;
       default: the policy's own) loaded with `load_reference`;
    4. `precomputed` (reference log-probs computed before training): the policy as it is now, held by nobody;
    5. otherwise a frozen copy of the policy as it is in memory now (`frozen_copy`); with `sharded` parameters
       (DeepSpeed ZeRO-3, which partitions the policy as it loads) a copy would hold empty shards, so the policy's
       own checkpoint is loaded instead, as TRL does.
    """
    peft = is_peft_model(policy) if peft is None else peft
    if ref_model is not None:
        if checkpoint is not None or quantization.mode != "none":
            raise ConfigError(
                "Got both a ref_model object and ref_model_name_or_path/ref_quantization in the config: pass one. "
                "Either unset the config keys, or drop ref_model= and let the trainer build the reference."
            )
        return _logged(Reference(ref_model.eval().requires_grad_(False), EXPLICIT))
    if peft and checkpoint is None and quantization.mode == "none":
        return _logged(Reference(policy, ADAPTERS_OFF))
    if sharded and not precomputed and checkpoint is None and quantization.mode == "none":
        checkpoint = get_config_model_id(extract_model_from_parallel(policy).config)
        if not checkpoint:
            raise UserError(
                "Under DeepSpeed ZeRO-3 the reference is loaded from the policy's checkpoint (a copy of a sharded "
                "model holds empty shards), but this policy was built in memory: save it first, or pass ref_model."
            )
    if checkpoint is not None or quantization.mode != "none":
        checkpoint = checkpoint or get_config_model_id(extract_model_from_parallel(policy).config)
        checkpoint = model_folder(checkpoint, "ref_model_name_or_path") if checkpoint else checkpoint
        if not checkpoint:
            raise UserError(
                "The policy was built in memory, so it has no checkpoint to load a quantized reference from: set "
                "ref_model_name_or_path, or save the policy first with save_pretrained."
            )
        model = load_reference(checkpoint, policy, tokenizer, quantization, device)
        return _logged(Reference(model, CHECKPOINT, checkpoint, quantization))
    if precomputed:
        return _logged(Reference(policy, INITIAL_POLICY))
    return _logged(Reference(frozen_copy(policy), COPY, get_config_model_id(policy.config) or None))


def _logged(reference: Reference) -> Reference:
    logger.info("Reference model: %s.", reference.describe())
    return reference


def save_mixed_plan(folder: str | Path, reference: Reference) -> None:
    """Write a mixed reference's checkpoint, compute dtype and plan into `folder` (`MIXED_PLAN_FILE`, beside the
    policy's weights), so that `saved_mixed_reference` rebuilds the reference a run trained against."""
    quantization = reference.quantization
    payload = {"checkpoint": reference.checkpoint, "compute_dtype": quantization.compute_dtype}
    write_json(Path(folder) / MIXED_PLAN_FILE, payload | {"plan": asdict(quantization.plan)})


def saved_mixed_reference(folder: str | Path) -> tuple[str, RefQuantization]:
    """The checkpoint and the `RefQuantization` of the mixed reference a run saved in `folder` (`save_mixed_plan`);
    `UserError` when the folder holds none."""
    path = Path(folder) / MIXED_PLAN_FILE
    if not path.is_file():
        raise UserError(
            f"ref_quantization: mixed rebuilds the plan the run used from {path}, which does not exist: give a run "
            "trained with ref_quantization: mixed (its output folder or a checkpoint), or another ref_quantization."
        )
    saved = json.loads(path.read_text())
    plan = MixedPlan(**saved["plan"])
    return saved["checkpoint"], RefQuantization(MIXED, saved["compute_dtype"], plan=plan)


def frozen_copy(policy: PreTrainedModel) -> PreTrainedModel:
    """π_ref = a frozen copy of the policy as it is in memory now (eval mode, no gradients).

    TRL, given no reference, reloads `policy.config._name_or_path` from disk: a policy changed after loading would
    silently get another reference, and a model built in memory would fail. A copy is exactly the policy passed in.

    A forward patched onto the policy's instance that calls the policy's own bound forward (TRL's `DPOTrainer` adds
    its fused LM head that way) would make the copy run the policy: the copy gets its class's forward back.
    """
    copied = copy.deepcopy(policy)
    for original, module in zip(policy.modules(), copied.modules(), strict=True):
        patched = module.__dict__.get("forward")
        if any(getattr(value, "__self__", None) is original for value in _closure_values(patched)):
            del module.__dict__["forward"]
    return copied.eval().requires_grad_(False)


def _closure_values(method) -> list:
    """The values a bound method's function closes over (empty cells left out)."""
    values = []
    for cell in getattr(getattr(method, "__func__", None), "__closure__", None) or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:
            continue
    return values


def bnb_config(quantization: RefQuantization) -> BitsAndBytesConfig | None:
    """The bitsandbytes config transformers loads `quantization` with (None for none, and for mixed, which loads in
    full precision and is quantized per layer afterwards). `lm_head` stays unquantized, as transformers leaves it."""
    if quantization.mode in ("none", MIXED):
        return None
    if quantization.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.mode,
        bnb_4bit_compute_dtype=quantization.torch_compute_dtype,
        bnb_4bit_use_double_quant=quantization.double_quant,
    )


def check_bitsandbytes_device(device: torch.device) -> None:
    """ValueError unless bitsandbytes imports and has a backend for `device` (CUDA, or the CPU from 0.46 on)."""
    try:
        import bitsandbytes
    except ImportError as error:
        raise UserError(
            f"ref_quantization needs bitsandbytes, which does not import here ({error}). Install it "
            "(pip install 'bitsandbytes>=0.46') or set ref_quantization: none."
        ) from error
    if device.type not in BNB_DEVICE_TYPES:
        raise UserError(
            f"ref_quantization: bitsandbytes cannot quantize on device '{device.type}' (it supports "
            f"{', '.join(BNB_DEVICE_TYPES)}). Set ref_quantization: none, or train on a CUDA GPU or the CPU (use_cpu)."
        )
    version = tuple(int(part) for part in bitsandbytes.__version__.split(".")[:2])
    if device.type == "cpu" and version < (0, 46):
        raise UserError(
            f"bitsandbytes {bitsandbytes.__version__} has no CPU backend (0.46 and later do): upgrade it, train on a "
            "CUDA GPU, or set ref_quantization: none."
        )


# bitsandbytes' CPU 4-bit kernel on AVX512-BF16 machines packs each layer's outputs in blocks of 32 for inference.
CPU_4BIT_OUTPUT_BLOCK = 32


def _cpu_packs_4bit_weights() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def check_cpu_4bit_widths(policy: torch.nn.Module) -> None:
    """ValueError naming the linear layers a 4-bit reference cannot hold on the CPU (bitsandbytes fails on them in
    the first reference pass, with a reshape error): those whose output width is not a multiple of 32."""
    narrow = [
        f"{name} ({module.out_features} outputs)"
        for name, module in extract_model_from_parallel(policy).named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.split(".")[-1] != "lm_head"
        and not any(part.startswith("lora_") for part in name.split("."))  # a PEFT policy's adapters: not loaded
        and module.out_features % CPU_4BIT_OUTPUT_BLOCK
    ]
    if narrow:
        raise UserError(
            f"A 4-bit reference on the CPU needs every quantized linear layer's output width to be a multiple of "
            f"{CPU_4BIT_OUTPUT_BLOCK} (bitsandbytes' CPU kernel packs them in blocks of {CPU_4BIT_OUTPUT_BLOCK}); "
            f"{len(narrow)} layers are narrower or uneven, e.g. {', '.join(narrow[:2])}. Use ref_quantization: int8 "
            "(or none), or train on a CUDA GPU."
        )


def load_reference(
    checkpoint: str,
    policy: PreTrainedModel,
    policy_tokenizer,
    quantization: RefQuantization = FULL_PRECISION,
    device: torch.device | None = None,
) -> PreTrainedModel:
    """π_ref loaded from `checkpoint`, held as `quantization` says (a mixed plan, when given, applied), frozen, on
    `device` (default: the policy's).

    The reference must share the policy's tokenizer and vocabulary: the log-ratios compare the same token ids.
    Raises ValueError (saying what to change) when it does not, or when bitsandbytes cannot run on the device.
    """
    device = torch.device(device) if device is not None else policy.device
    config = bnb_config(quantization)
    if quantization.mode != "none":
        check_bitsandbytes_device(device)
    four_bit = quantization.mode == MIXED or (config is not None and config.load_in_4bit)
    if four_bit and device.type == "cpu" and _cpu_packs_4bit_weights():
        check_cpu_4bit_widths(policy)
    _check_same_vocabulary(checkpoint, policy, policy_tokenizer)
    if quantization.mode == "int8":
        quiet_int8_cast_warning()
    reference = AutoModelForCausalLM.from_pretrained(
        checkpoint,
        dtype=policy.dtype,
        quantization_config=config,
        device_map={"": device} if config is not None else None,
    )
    if config is None:
        reference.to(device)
    if quantization.plan is not None:
        quantize_to_plan(reference, quantization.plan, quantization.torch_compute_dtype)
    return reference.eval().requires_grad_(False)


def _check_same_vocabulary(checkpoint: str, policy: PreTrainedModel, policy_tokenizer) -> None:
    """ValueError unless `checkpoint` has the policy's tokenizer (when one is given) and output vocabulary size."""
    if policy_tokenizer is not None:
        tokenizer = getattr(policy_tokenizer, "tokenizer", policy_tokenizer)
        try:
            reference_tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        except OSError as error:
            raise UserError(
                f"ref_model_name_or_path {checkpoint!r} has no tokenizer to check against the policy's ({error})."
            ) from error
        if reference_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise UserError(
                f"The reference {checkpoint!r} has a different tokenizer from the policy's ({len(reference_tokenizer)} "
                f"vs {len(tokenizer)} tokens, or the same size with other ids): the log-ratio log π_θ/π_ref needs both "
                "models to read the same token ids. Use a reference from the policy's model family."
            )
    reference_vocab = AutoConfig.from_pretrained(checkpoint).get_text_config().vocab_size
    weight = extract_model_from_parallel(policy).get_output_embeddings().weight
    policy_vocab = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 keeps the full shape in ds_shape
    if reference_vocab != policy_vocab:
        raise UserError(
            f"The reference {checkpoint!r} predicts over {reference_vocab} tokens and the policy over {policy_vocab}: "
            "log-ratios and token-level KLs need the same vocabulary. Use a reference with the policy's vocabulary "
            "size (or resize the policy's embeddings to match)."
        )


@dataclass
class QuantizationGap:
    """How far a quantized reference is from the full-precision one, over `sequences` completions.

    `logp_abs_diff_mean` / `_max`: mean and max over sequences of |log π_ref,q(y|x) − log π_ref,full(y|x)|;
    `token_kl_mean`: mean over completion tokens of KL(π_ref,full(·|x,y<t) ‖ π_ref,q(·|x,y<t)).
    """

    sequences: int
    logp_abs_diff_mean: float
    logp_abs_diff_max: float
    token_kl_mean: float

    def metrics(self) -> dict[str, float]:
        """The gap under `ref/` keys, as logged."""
        return {
            "ref/logp_abs_diff_mean": self.logp_abs_diff_mean,
            "ref/logp_abs_diff_max": self.logp_abs_diff_max,
            "ref/token_kl_mean": self.token_kl_mean,
        }


ModelInContext = tuple[torch.nn.Module, Callable[[], AbstractContextManager]]


@torch.no_grad()
def quantization_gap(full: ModelInContext, quantized: ModelInContext, batches) -> QuantizationGap:
    """Compare two references, each a (model, context) pair, over `batches` of (model_kwargs, completion_mask)."""
    diffs: list[Tensor] = []
    kl_sum, tokens = 0.0, 0
    for model_kwargs, completion_mask in batches:
        log_probs, logps = [], []
        for model, context in (full, quantized):
            with context():
                selected, _ = completion_logits(model, model_kwargs, completion_mask)
            log_probs.append(log_probs_from_logits(selected.logits))
            logps.append(selected.sequence_sum(token_logps(log_probs[-1], selected.labels)))
        diffs.append((logps[1] - logps[0]).abs().cpu())
        kl_sum += token_kl(*log_probs).sum().item()
        tokens += log_probs[0].size(0)
    diff = torch.cat(diffs)
    return QuantizationGap(len(diff), diff.mean().item(), diff.max().item(), kl_sum / max(tokens, 1))
