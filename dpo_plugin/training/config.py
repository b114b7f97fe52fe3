"""`PreferenceConfig`: TRL's `DPOConfig` plus the plugin's objectives, validated at construction."""

import logging
import math
from dataclasses import dataclass, field

from trl import DPOConfig

from ..objectives.losses import OBJECTIVES, TOKEN_LEVEL_OBJECTIVES

logger = logging.getLogger("dpo_plugin")

REF_QUANTIZATIONS = ("none", "nf4", "fp4", "int8")  # one bitsandbytes quantization for the whole reference
MIXED = "mixed"  # NF4, int8 or full precision per layer, within `ref_bytes_budget` (`mixed_reference.py`)
REF_PRECISIONS = (*REF_QUANTIZATIONS, MIXED)
QLORA_ADAPTER_DTYPES = ("bfloat16", "float32")
BNB_COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# The loss names TRL 1.16's `DPOTrainer._compute_loss` knows; `ipo` is also a plugin name and the plugin's wins.
TRL_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
# TRL's name for a plugin objective that TRL computes to the same numbers (the plugin's `ipo` with `ipo_normalize`).
TRL_EQUIVALENTS = {"dpo": "sigmoid", "ipo": "ipo"}


def _integer_at_least(bound: int):
    return lambda value: isinstance(value, int) and value >= bound


def _finite_at_least(bound: float):
    return lambda value: isinstance(value, (int, float)) and math.isfinite(value) and value >= bound


# Settings TrainingArguments accepts and that fail only once training starts (after output_dir exists): field ->
# (test, the valid range as the error states it). None passes (the field is unset).
RUN_SETTING_RANGES = {
    "per_device_train_batch_size": (_integer_at_least(1), "an integer >= 1 (pairs per device and step)"),
    "per_device_eval_batch_size": (_integer_at_least(1), "an integer >= 1"),
    "gradient_accumulation_steps": (_integer_at_least(1), "an integer >= 1"),
    "learning_rate": (_finite_at_least(0.0), "a finite number >= 0"),
    "weight_decay": (_finite_at_least(0.0), "a finite number >= 0"),
    "max_grad_norm": (_finite_at_least(0.0), "a finite number >= 0 (0: no clipping)"),
    "num_train_epochs": (_finite_at_least(0.0), "a finite number >= 0"),
    "warmup_steps": (_finite_at_least(0.0), "a number >= 0"),
    "max_length": (_integer_at_least(2), "an integer >= 2 (prompt and completion tokens), or unset"),
    "max_weight_growth": (_finite_at_least(0.0), "a finite number >= 0"),
    "logits_block_size": (_integer_at_least(1), "an integer >= 1, or unset for the automatic size"),
}


@dataclass
class PreferenceConfig(DPOConfig):
    """`trl.DPOConfig` with the plugin's objectives.

    `loss_type` takes one plugin objective (`dpo`, `ipo`, `tdpo1`, `tdpo2`) or any of TRL's own loss names, which
    `PreferenceTrainer` hands to `trl.DPOTrainer` unchanged. Everything else is TRL's `DPOConfig`.
    """

    loss_type: list[str] = field(
        default_factory=lambda: ["dpo"],
        metadata={
            "help": "Objective. Plugin objectives: `dpo` (DPO; cDPO with `label_smoothing` > 0; reference-free with "
            "`reference_free`), `ipo` (IPO, see `ipo_normalize`), `tdpo1`, `tdpo2` (token-level DPO). TRL's own names "
            f"({', '.join(TRL_LOSS_TYPES)}) are computed by TRL's DPOTrainer, and may be combined with `loss_weights`."
        },
    )
    reference_free: bool = field(
        default=False,
        metadata={"help": "`dpo` only: treat log π_ref ≡ 0, so no reference model is run or kept."},
    )
    ipo_normalize: bool = field(
        default=True,
        metadata={
            "help": "`ipo` only: divide each log-ratio by its completion length before the squared loss, as TRL's "
            "`ipo` does (a comment in TRL's code says the IPO authors confirmed their results use this form; the "
            "paper's eq. 17 is written on summed log-ratios). False: summed log-ratios, as in Mitchell's reference "
            "DPO code."
        },
    )
    tdpo_alpha: float = field(
        default=0.5,
        metadata={"help": "`tdpo2` only: weight α of the sequential KL term (≥ 0)."},
    )
    skip_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Drop (and count in the log) dataset rows that fail validation instead of stopping with an error."
        },
    )

    skip_nonfinite_steps: bool = field(
        default=False,
        metadata={
            "help": "When a step's loss or gradients are NaN/inf, skip that optimizer step (counted under "
            "`nonfinite_skipped`) instead of stopping with an error naming the step and the last checkpoint."
        },
    )
    max_weight_growth: float = field(
        default=1000.0,
        metadata={
            "help": "After each optimizer step, stop (and save nothing of that step) when a trainable weight tensor's "
            "largest magnitude exceeds this many times its largest magnitude when training began (at least 1): "
            "exploded weights are finite but useless. 0: stop on NaN/inf weights only."
        },
    )
    save_on_interrupt: bool = field(
        default=True,
        metadata={
            "help": "On SIGTERM or SIGINT (Ctrl-C), finish the optimizer step in progress, save a checkpoint and stop, "
            "so `resume_from_checkpoint` continues exactly where the run was stopped. False: Python's default "
            "handling (the process dies; the last complete checkpoint is still intact)."
        },
    )
    share_prompt: bool = field(
        default=True,
        metadata={
            "help": "Plugin objectives: encode each pair's prompt once, packing [prompt | chosen | rejected] into one "
            "row with a 4-D attention mask (same log-probs, fewer tokens). Falls back to TRL's two rows per pair for "
            "models other than Llama/Qwen2/Qwen3 with sdpa or eager attention, and for batches it cannot pack."
        },
    )
    chunked_head: bool = field(
        default=True,
        metadata={
            "help": "Plugin objectives: compute log π(y_t) (and TDPO's per-position KL) from the models' hidden states "
            "and LM heads a block of positions at a time, recomputing each block's logits in backward, so no "
            "(completion positions × vocabulary) logits are held (objectives/chunked_head.py). Same numbers as the "
            "full logits; models whose head cannot take this path (LoRA on lm_head, DeepSpeed ZeRO-3) fall back to "
            "full logits at completion positions, with a log line saying why. False: always full logits."
        },
    )
    logits_block_size: int | None = field(
        default=None,
        metadata={
            "help": "Positions per block of the chunked head. Unset: the largest power of two (16 to 4096) whose four "
            "float32 block × vocabulary tensors fit 256 MiB: 256 at a vocabulary of 49k, 64 at 262k."
        },
    )
    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint of the frozen reference π_ref (local folder, hub id, or smollm2-135m-instruct). "
            "Default: the policy's own checkpoint. Same tokenizer as the policy. Not combined with `ref_model=`."
        },
    )
    ref_quantization: str = field(
        default="none",
        metadata={
            "help": "Load the reference with bitsandbytes: `none`, `nf4` or `fp4` (4-bit), `int8` (LLM.int8), or "
            "`mixed` (each linear layer NF4, int8 or full precision, chosen from its measured sensitivity within "
            "`ref_bytes_budget`). The policy stays as it is (full precision or LoRA). Works on CUDA and, with "
            "bitsandbytes >= 0.46, the CPU.",
            "choices": list(REF_PRECISIONS),
        },
    )
    ref_bnb_4bit_compute_dtype: str | None = field(
        default=None,
        metadata={
            "help": f"4-bit reference only (ignored otherwise, as TRL's bnb_4bit_* keys are): dtype of its matmuls, "
            f"one of {BNB_COMPUTE_DTYPES} (default float32)."
        },
    )
    ref_bnb_4bit_use_double_quant: bool = field(
        default=False,
        metadata={"help": "4-bit reference only (ignored otherwise): also quantize the quantization constants."},
    )
    ref_bytes_budget: float = field(
        default=0.35,
        metadata={
            "help": "ref_quantization: mixed only: the reference's bytes as a fraction of its full-precision bytes "
            "(NF4 everywhere is about 0.31 for SmolLM2-135M, int8 everywhere 0.41)."
        },
    )
    ref_calibration_batches: int = field(
        default=1,
        metadata={
            "help": "ref_quantization: mixed only: training batches (the last ones) on which each layer's "
            "sensitivity is measured before training (one forward per layer and precision per batch)."
        },
    )
    qlora_adapter_dtype: str = field(
        default="bfloat16",
        metadata={
            "help": "LoRA on a quantized base (load_in_4bit / load_in_8bit): the dtype its adapter weights train in. "
            "TRL casts them to bfloat16, as the QLoRA paper does; float32 keeps optimizer updates that bfloat16 "
            "would round away.",
            "choices": list(QLORA_ADAPTER_DTYPES),
        },
    )
    ref_gap_batches: int = field(
        default=4,
        metadata={
            "help": "With a quantized reference: before training, measure its gap to the full-precision model on this "
            "many training batches and log it under `ref/` keys (0: skip)."
        },
    )

    allow_partial_resume: bool = field(
        default=False,
        metadata={
            "help": "Resume from a checkpoint that lacks some of the state an exact resume needs (optimizer, "
            "scheduler, RNG states, the plugin's token count): what is missing starts afresh, and the log says "
            "which. False: such a resume is refused, naming the missing file."
        },
    )

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self._validate_run()
        self._validate_objective()
        self._validate_reference()
        super().__post_init__()
        if self.resume_from_checkpoint is not None:  # checked now, before anything creates output_dir
            from .checkpoints import resume_checkpoint

            resume_checkpoint(self.resume_from_checkpoint, self.output_dir, self.allow_partial_resume)

    def _validate_run(self) -> None:
        for name, (is_valid, valid_range) in RUN_SETTING_RANGES.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not is_valid(value)):
                raise ValueError(f"{name} must be {valid_range}; got {value!r}.")

    @property
    def builds_reference(self) -> bool:
        """Whether the trainer loads π_ref from a checkpoint (another checkpoint, or a quantized one)."""
        return self.ref_model_name_or_path is not None or self.ref_quantization != "none"

    def _validate_reference(self) -> None:
        if self.ref_quantization not in REF_PRECISIONS:
            raise ValueError(
                f"ref_quantization {self.ref_quantization!r} is not known. Valid values: {', '.join(REF_PRECISIONS)}."
            )
        if self.qlora_adapter_dtype not in QLORA_ADAPTER_DTYPES:
            raise ValueError(
                f"qlora_adapter_dtype {self.qlora_adapter_dtype!r} is not known. Valid values: "
                f"{', '.join(QLORA_ADAPTER_DTYPES)}."
            )
        if not 0 < self.ref_bytes_budget <= 1:
            raise ValueError(
                f"ref_bytes_budget must be in (0, 1] (a fraction of the full-precision bytes); got "
                f"{self.ref_bytes_budget}."
            )
        if self.ref_calibration_batches < 1:
            raise ValueError(f"ref_calibration_batches must be >= 1; got {self.ref_calibration_batches}.")
        if self.ref_quantization == MIXED and self.precompute_ref_log_probs:
            raise ValueError(
                "ref_quantization: mixed builds a reference to hold while training, and precompute_ref_log_probs "
                "holds none: keep one (precomputed log-probs cost no memory and no accuracy, for DPO and IPO)."
            )
        if self.ref_bnb_4bit_compute_dtype is not None and self.ref_bnb_4bit_compute_dtype not in BNB_COMPUTE_DTYPES:
            raise ValueError(
                f"ref_bnb_4bit_compute_dtype {self.ref_bnb_4bit_compute_dtype!r} is not known. Valid values: "
                f"{', '.join(BNB_COMPUTE_DTYPES)}."
            )
        if self.ref_gap_batches < 0:
            raise ValueError(f"ref_gap_batches must be >= 0; got {self.ref_gap_batches}.")
        if self.builds_reference and self.reference_free:
            raise ValueError(
                "reference_free runs no reference, so ref_model_name_or_path and ref_quantization have nothing to "
                "build: unset them or set reference_free: false."
            )
        if self.ref_quantization != "none" and self.sync_ref_model:
            raise ValueError(
                "sync_ref_model mixes the policy's weights into the reference, which a quantized reference cannot "
                "take: set sync_ref_model: false or ref_quantization: none."
            )

    @property
    def plugin_loss_type(self) -> str | None:
        """The objective the plugin computes: one of its own, or `dpo` for TRL's `sigmoid` used alone without TRL-only
        options (the same numbers, computed faster); None when TRL's `DPOTrainer` computes the loss."""
        if len(self.loss_type) != 1:
            return None
        name = self.loss_type[0]
        if name in OBJECTIVES:
            return name
        return "dpo" if name == "sigmoid" and not self.trl_only_options else None

    @property
    def dpo_label_smoothing(self) -> float:
        """ε of the `dpo` objective: `label_smoothing` for the plugin's `dpo` (cDPO); 0 for TRL's `sigmoid`, which
        ignores it in TRL 1.16."""
        return self.label_smoothing if self.loss_type == ["dpo"] else 0.0

    @property
    def trl_only_options(self) -> list[str]:
        """The TRL options this config sets that only TRL's own loss computes (WPO weighting, LD-DPO, f-DPO, a
        weighted mixture of losses)."""
        options = {
            "use_weighting": self.use_weighting,
            "ld_alpha": self.ld_alpha is not None,
            "f_divergence_type": self.f_divergence_type != "reverse_kl",
            "loss_weights": self.loss_weights is not None,
        }
        return [name for name, is_set in options.items() if is_set]

    def _validate_objective(self) -> None:
        known = OBJECTIVES + TRL_LOSS_TYPES
        unknown = [name for name in self.loss_type if name not in known]
        if unknown:
            raise ValueError(f"loss_type {unknown} is not known. Valid values: {', '.join(known)}.")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0 (it scales the implicit reward); got {self.beta}.")
        plugin = [name for name in self.loss_type if name in OBJECTIVES]
        if plugin and (self.trl_only_options or len(self.loss_type) > 1):
            self._hand_to_trl(plugin)
            plugin = []
        if not plugin:
            if self.reference_free:
                raise ValueError("reference_free applies to loss_type 'dpo' only; use loss_type: dpo.")
            if self.loss_type == ["sigmoid"] and self.label_smoothing and not self.trl_only_options:
                logger.warning(
                    "label_smoothing %g has no effect on TRL's sigmoid loss (TRL 1.16's DPOTrainer ignores it too). "
                    "For conservative DPO (cDPO), use loss_type: dpo.",
                    self.label_smoothing,
                )
            return
        loss = plugin[0]
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"label_smoothing must lie in [0, 0.5) (the probability a label is flipped); "
                f"got {self.label_smoothing}."
            )
        if self.label_smoothing and loss != "dpo":
            raise ValueError(f"label_smoothing (cDPO) applies to loss_type 'dpo' only; loss_type is '{loss}'.")
        if self.tdpo_alpha < 0:
            raise ValueError(f"tdpo_alpha must be ≥ 0; got {self.tdpo_alpha}.")
        if self.reference_free and loss != "dpo":
            raise ValueError(f"reference_free applies to loss_type 'dpo' only; loss_type is '{loss}'.")
        if self.precompute_ref_log_probs and loss in TOKEN_LEVEL_OBJECTIVES:
            raise ValueError(
                f"precompute_ref_log_probs cannot be used with loss_type '{loss}': token-level DPO needs the "
                "reference's full next-token distribution at every completion position, not summed log-probs. "
                "Set precompute_ref_log_probs: false."
            )
        if self.precompute_ref_log_probs and self.reference_free:
            raise ValueError(
                "precompute_ref_log_probs has nothing to compute with reference_free: set one of them off."
            )

    def _hand_to_trl(self, plugin: list[str]) -> None:
        """A plugin objective beside TRL-only options or other losses is computed by TRL's `DPOTrainer`, under TRL's
        name for the same objective (`TRL_EQUIVALENTS`); ValueError when TRL has no such objective."""
        beside = ", ".join(self.trl_only_options) or f"the other losses in {self.loss_type}"
        for name in plugin:
            problem = self._why_trl_cannot_compute(name)
            if problem:
                raise ValueError(
                    f"loss_type '{name}' with {beside}: only TRL's DPOTrainer computes {beside}, and {problem}. "
                    f"Unset {beside}, or change that setting."
                )
        trl_names = [TRL_EQUIVALENTS.get(name, name) for name in self.loss_type]
        logger.info(
            "loss_type %s with %s: computed by TRL's DPOTrainer as %s (the same objective).",
            self.loss_type,
            beside,
            trl_names,
        )
        self.loss_type = trl_names

    def _why_trl_cannot_compute(self, name: str) -> str | None:
        if name in TOKEN_LEVEL_OBJECTIVES:
            return "TRL has no token-level DPO"
        if name == "dpo" and self.label_smoothing:
            return "TRL's sigmoid has no label smoothing (cDPO): set label_smoothing: 0"
        if name == "dpo" and self.reference_free:
            return "TRL's sigmoid has no reference-free mode"
        if name == "ipo" and not self.ipo_normalize:
            return "TRL's ipo is the length-averaged form only (ipo_normalize: true)"
        return None
