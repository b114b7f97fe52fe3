"""`PreferenceConfig`: TRL's `DPOConfig` plus the plugin's objectives, validated at construction."""

import logging
from dataclasses import dataclass, field, fields

from trl import DPOConfig

from ..objectives.losses import OBJECTIVES, TOKEN_LEVEL_OBJECTIVES
from ..utils.errors import ConfigError
from ..utils.validation import check, integer_at_least, number_above, number_at_least, number_in, one_of
from .reference import BNB_COMPUTE_DTYPES, MIXED, REF_PRECISIONS, RefQuantization

logger = logging.getLogger("dpo_plugin")

QLORA_ADAPTER_DTYPES = ("bfloat16", "float32")
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


@dataclass
class ReferenceQuantizationArguments:
    """The recipe keys that say how π_ref's weights are held, shared by `PreferenceConfig` and `dpo-plugin eval`."""

    ref_quantization: str = field(
        default="none",
        metadata={
            "help": "Load the reference with bitsandbytes: `none`, `nf4` or `fp4` (4-bit), `int8` (LLM.int8), or "
            "`mixed` (each linear layer NF4, int8 or full precision: in training chosen from its measured sensitivity "
            "within `ref_bytes_budget`; in `dpo-plugin eval` the plan the run saved). The policy stays as it is (full "
            "precision or LoRA). Works on CUDA and, with bitsandbytes >= 0.46, the CPU.",
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


REF_BYTES_BUDGET = number_in(0.0, 1.0, "(a fraction of the full-precision bytes)", closed_low=False)
REFERENCE_QUANTIZATION_RULES = {
    "ref_quantization": one_of(REF_PRECISIONS),
    "ref_bnb_4bit_compute_dtype": one_of(BNB_COMPUTE_DTYPES),
}
# The plugin's keys and the TrainingArguments settings that fail only once training starts (after output_dir
# exists), checked when the config is built.
PREFERENCE_RULES = {
    "per_device_train_batch_size": integer_at_least(1, "(pairs per device and step)"),
    "per_device_eval_batch_size": integer_at_least(1),
    "gradient_accumulation_steps": integer_at_least(1),
    "learning_rate": number_at_least(0.0),
    "weight_decay": number_at_least(0.0),
    "max_grad_norm": number_at_least(0.0, "(0: no clipping)"),
    "num_train_epochs": number_at_least(0.0),
    "save_steps": number_above(0.0, "(steps, or a fraction of the run when below 1)"),
    "logging_steps": number_above(0.0, "(steps, or a fraction of the run when below 1)"),
    "warmup_steps": number_at_least(0.0),
    "max_length": integer_at_least(2, "(prompt and completion tokens), or unset"),
    "max_weight_growth": number_at_least(0.0),
    "logits_block_size": integer_at_least(1, "or unset for the automatic size"),
    "beta": number_above(0.0, "(it scales the implicit reward)"),
    "tdpo_alpha": number_at_least(0.0),
    **REFERENCE_QUANTIZATION_RULES,
    "qlora_adapter_dtype": one_of(QLORA_ADAPTER_DTYPES),
    "ref_bytes_budget": REF_BYTES_BUDGET,
    "ref_calibration_batches": integer_at_least(1),
    "ref_gap_batches": integer_at_least(0),
}
# ε of cDPO, checked for the plugin's objectives only (TRL's own losses read label_smoothing their own way).
LABEL_SMOOTHING = number_in(0.0, 0.5, "(the probability a label is flipped)", closed_high=False)


@dataclass
class PreferenceConfig(ReferenceQuantizationArguments, DPOConfig):
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
    cast_frozen_weights_once: bool = field(
        default=True,
        metadata={
            "help": "Under bf16/fp16 autocast in one process: while training, a PEFT policy's frozen base linear "
            "layers (also its reference) compute under autocast with a copy of their weight in that precision made "
            "once, instead of autocast casting it again at every forward (training/frozen_weights.py). Same numbers "
            "to the bit, same peak memory; the weights themselves are not modified. False: autocast casts them."
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

    resume_allow_changes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Keys that may differ from the run a resumed checkpoint saved (e.g. [learning_rate]); any other "
            "change (objective, β, batch geometry, data, model, LoRA) is refused, naming it."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "`dpo-plugin train` into an output_dir that holds another run's checkpoints or final outputs: "
            "delete them and start over (transformers 4's key). False: such a rerun is refused, naming "
            "--resume_from_checkpoint and this key."
        },
    )

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        check(self, PREFERENCE_RULES)
        if self.num_train_epochs == 0 and self.max_steps <= 0:
            raise ConfigError(
                "num_train_epochs: 0 with max_steps unset trains no step, and the run would save the model it started "
                "from as if trained: set num_train_epochs > 0 or max_steps > 0."
            )
        self._validate_objective()
        self._validate_reference()
        super().__post_init__()
        if self.resume_from_checkpoint is not None:  # checked now, before anything creates output_dir
            from .checkpoints import resume_checkpoint

            resume_checkpoint(self.resume_from_checkpoint, self.output_dir, self.allow_partial_resume)

    @property
    def builds_reference(self) -> bool:
        """Whether the trainer loads π_ref from a checkpoint (another checkpoint, or a quantized one)."""
        return self.ref_model_name_or_path is not None or self.ref_quantization != "none"

    @property
    def ref_quantization_settings(self) -> RefQuantization:
        """How the trainer holds π_ref; a mixed reference is planned within `ref_bytes_budget` before training."""
        return RefQuantization(
            self.ref_quantization,
            self.ref_bnb_4bit_compute_dtype,
            self.ref_bnb_4bit_use_double_quant,
            self.ref_bytes_budget,
        )

    def _validate_reference(self) -> None:
        if self.ref_quantization == MIXED and self.precompute_ref_log_probs:
            raise ConfigError(
                "ref_quantization: mixed builds a reference to hold while training, and precompute_ref_log_probs "
                "holds none: keep one (precomputed log-probs cost no memory and no accuracy, for DPO and IPO)."
            )
        if self.builds_reference and self.reference_free:
            raise ConfigError(
                "reference_free runs no reference, so ref_model_name_or_path and ref_quantization have nothing to "
                "build: unset them or set reference_free: false."
            )
        if self.ref_quantization != "none" and self.sync_ref_model:
            raise ConfigError(
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
        if not self.loss_type:
            raise ConfigError(f"loss_type is an empty list: name an objective ({', '.join(OBJECTIVES)}) or TRL losses.")
        unknown = [name for name in self.loss_type if name not in known]
        if unknown:
            raise ConfigError(f"loss_type {unknown} is not known. Valid values: {', '.join(known)}.")
        plugin = [name for name in self.loss_type if name in OBJECTIVES]
        if plugin and (self.trl_only_options or len(self.loss_type) > 1):
            self._hand_to_trl(plugin)
            plugin = []
        if not plugin:
            if self.reference_free:
                raise ConfigError("reference_free applies to loss_type 'dpo' only; use loss_type: dpo.")
            if self.loss_type == ["sigmoid"] and self.label_smoothing and not self.trl_only_options:
                logger.warning(
                    "label_smoothing %g has no effect on TRL's sigmoid loss (TRL 1.16's DPOTrainer ignores it too). "
                    "For conservative DPO (cDPO), use loss_type: dpo.",
                    self.label_smoothing,
                )
            return
        loss = plugin[0]
        check(self, {"label_smoothing": LABEL_SMOOTHING})
        if self.label_smoothing and loss != "dpo":
            raise ConfigError(f"label_smoothing (cDPO) applies to loss_type 'dpo' only; loss_type is '{loss}'.")
        if self.reference_free and loss != "dpo":
            raise ConfigError(f"reference_free applies to loss_type 'dpo' only; loss_type is '{loss}'.")
        if self.precompute_ref_log_probs and loss in TOKEN_LEVEL_OBJECTIVES:
            raise ConfigError(
                f"precompute_ref_log_probs cannot be used with loss_type '{loss}': token-level DPO needs the "
                "reference's full next-token distribution at every completion position, not summed log-probs. "
                "Set precompute_ref_log_probs: false."
            )
        if self.precompute_ref_log_probs and self.reference_free:
            raise ConfigError(
                "precompute_ref_log_probs has nothing to compute with reference_free: set one of them off."
            )

    def _hand_to_trl(self, plugin: list[str]) -> None:
        """A plugin objective beside TRL-only options or other losses is computed by TRL's `DPOTrainer`, under TRL's
        name for the same objective (`TRL_EQUIVALENTS`); ValueError when TRL has no such objective."""
        beside = ", ".join(self.trl_only_options) or f"the other losses in {self.loss_type}"
        for name in plugin:
            problem = self._why_trl_cannot_compute(name)
            if problem:
                raise ConfigError(
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


def as_preference_config(args: DPOConfig) -> PreferenceConfig:
    """The config `PreferenceTrainer` reads: a `PreferenceConfig` as it is; TRL's own `DPOConfig` converted, every
    value it holds kept and the plugin's keys at their defaults (so `DPOTrainer` recipes switch by changing the
    class); anything else a `ConfigError` saying what to pass."""
    if isinstance(args, PreferenceConfig):
        return args
    if type(args) is not DPOConfig:
        raise ConfigError(
            f"args is a {type(args).__name__}: PreferenceTrainer takes a dpo_plugin.PreferenceConfig (or TRL's "
            "DPOConfig, which it converts). Pass PreferenceConfig(...) with the same keys."
        )
    logger.info("args is TRL's DPOConfig: converted to PreferenceConfig, the plugin's own keys at their defaults.")
    return PreferenceConfig(**{f.name: getattr(args, f.name) for f in fields(DPOConfig) if f.init})
