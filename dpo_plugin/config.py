"""`PreferenceConfig`: TRL's `DPOConfig` plus the plugin's objectives, validated at construction."""

from dataclasses import dataclass, field

from trl import DPOConfig

PLUGIN_LOSS_TYPES = ("dpo", "ipo", "tdpo1", "tdpo2")
TDPO_LOSS_TYPES = ("tdpo1", "tdpo2")
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
            "help": "`ipo` only: divide each log-ratio by its completion length before the squared loss (TRL's `ipo`, "
            "the form the IPO paper's results use). False: summed log-ratios (Mitchell's reference code)."
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

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self._validate_objective()
        super().__post_init__()

    @property
    def plugin_loss_type(self) -> str | None:
        """The plugin objective this config selects, or None when TRL computes the loss."""
        return self.loss_type[0] if self.loss_type[0] in PLUGIN_LOSS_TYPES else None

    def _validate_objective(self) -> None:
        known = PLUGIN_LOSS_TYPES + TRL_LOSS_TYPES
        unknown = [name for name in self.loss_type if name not in known]
        if unknown:
            raise ValueError(f"loss_type {unknown} is not known. Valid values: {', '.join(known)}.")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0 (it scales the implicit reward); got {self.beta}.")
        plugin = [name for name in self.loss_type if name in PLUGIN_LOSS_TYPES]
        if not plugin:
            if self.reference_free:
                raise ValueError("reference_free applies to loss_type 'dpo' only; use loss_type: dpo.")
            return
        if len(self.loss_type) > 1:
            raise ValueError(
                f"loss_type {self.loss_type}: a plugin objective ({', '.join(PLUGIN_LOSS_TYPES)}) is used alone. "
                "Combine TRL's own loss names with loss_weights, or pick one plugin objective."
            )
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
        if self.precompute_ref_log_probs and loss in TDPO_LOSS_TYPES:
            raise ValueError(
                f"precompute_ref_log_probs cannot be used with loss_type '{loss}': token-level DPO needs the "
                "reference's full next-token distribution at every completion position, not summed log-probs. "
                "Set precompute_ref_log_probs: false."
            )
        if self.precompute_ref_log_probs and self.reference_free:
            raise ValueError(
                "precompute_ref_log_probs has nothing to compute with reference_free: set one of them off."
            )
        unsupported = {
            "ld_alpha": self.ld_alpha is not None,
            "f_divergence_type": self.f_divergence_type != "reverse_kl",
            "use_weighting": self.use_weighting,
            "loss_weights": self.loss_weights is not None,
        }
        for name, is_set in unsupported.items():
            if is_set:
                raise ValueError(
                    f"{name} is a TRL option for TRL's own loss names; the plugin objective '{loss}' does not use it. "
                    f"Unset {name}, or use TRL's loss_type 'sigmoid'."
                )
