"""`OnlinePreferenceConfig`: `PreferenceConfig` plus the on-policy loop's keys, validated at construction."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from ..training.config import PreferenceConfig
from ..utils.errors import ConfigError
from ..utils.validation import Rule, check, integer_at_least, number_above, number_at_least, number_in, one_of
from .pairs import PAIR_RULES

REFERENCE_UPDATES = ("fixed", "previous_round")
ONLINE_RULES = {
    "rounds": integer_at_least(1),
    "prompts_per_round": integer_at_least(1),
    "samples_per_prompt": integer_at_least(2, "(a pair needs two samples of a prompt)"),
    "pair_rule": one_of(PAIR_RULES),
    "min_reward_margin": number_at_least(0.0, "(0: drop exact ties only)"),
    "epochs_per_round": number_above(0.0),
    "reference_update": one_of(REFERENCE_UPDATES),
    "max_new_tokens": integer_at_least(1),
    "temperature": number_above(0.0, "(sampling)"),
    "top_p": number_in(0.0, 1.0, "(1: off)", closed_low=False),
    "top_k": integer_at_least(0, "(0: off)"),
    "sampling_batch_size": integer_at_least(1),
    "reward_weights": Rule(
        lambda weights: all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights),
        "be a list of numbers, one per reward function",
    ),
    "min_p": number_in(0.0, 1.0, "(unset: off)"),
    "repetition_penalty": number_above(0.0, "(1: off)"),
    "missing_eos_penalty": number_at_least(0.0, "(subtracted from the reward of a completion without EOS)"),
    "generation_kwargs": Rule(lambda value: isinstance(value, dict), "be a mapping of generate() keyword arguments"),
}


@dataclass
class OnlinePreferenceConfig(PreferenceConfig):
    """`PreferenceConfig` for on-policy (iterative) training with `OnlinePreferenceTrainer`.

    Each of `rounds` rounds samples `samples_per_prompt` completions of each of `prompts_per_round` prompts from the
    policy (through the grouped `Completion-v0` environment), ranks them with the reward functions, builds pairs by
    `pair_rule` (dropping gaps of 0 or below `min_reward_margin`) and trains `epochs_per_round` passes over them with
    the configured objective (`loss_type`, as in `PreferenceConfig`). The reference is the initial policy
    (`reference_update: fixed`) or the policy at the start of each round (`previous_round`).

    Every field of TRL's `OnlineDPOConfig` is accepted: the sampling keys (`max_new_tokens`, `temperature`,
    `top_p`, `top_k`, `min_p`, `repetition_penalty`, `cache_implementation`, then `generation_kwargs` over them) and
    `missing_eos_penalty` act as in TRL; a one-element `beta` list is its value; `use_vllm: true` is refused by the
    trainer and the recipe parser (the plugin samples with transformers' `generate`); the other vLLM keys and
    `ds3_gather_for_generation` have no effect. `max_steps` > 0 ends the run at that many optimizer steps in all,
    or at `rounds`, whichever comes first. The defaults that differ from `OnlineDPOConfig`'s (`max_new_tokens` 48,
    `temperature` 1.0: π itself, `learning_rate` 1e-6) are the plugin's.
    """

    rounds: int = field(default=3, metadata={"help": "Rounds of sample → rank → train."})
    prompts_per_round: int = field(default=64, metadata={"help": "Prompts sampled each round (drawn in turn)."})
    samples_per_prompt: int = field(
        default=4, metadata={"help": "Completions sampled per prompt and round: the group the rewards rank."}
    )
    pair_rule: str = field(
        default="best_worst",
        metadata={
            "help": "How a ranked group becomes pairs: `best_worst` (the highest reward over the lowest), "
            "`best_random` (the highest over one other at random) or `all_pairs` (every better-worse pair).",
            "choices": list(PAIR_RULES),
        },
    )
    min_reward_margin: float = field(
        default=0.0,
        metadata={"help": "Drop pairs whose reward gap is below this; a gap of 0 (a tie) is always dropped."},
    )
    epochs_per_round: float = field(default=1.0, metadata={"help": "Passes over each round's pairs."})
    reference_update: str = field(
        default="fixed",
        metadata={
            "help": "π_ref of each round: `fixed`, the initial policy; `previous_round`, the policy as the round "
            "starts (for LoRA its adapters copied into a `ref` adapter).",
            "choices": list(REFERENCE_UPDATES),
        },
    )
    max_new_tokens: int = field(default=48, metadata={"help": "Longest sampled completion, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (1.0 samples π itself)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0: off)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    sampling_batch_size: int = field(
        default=16, metadata={"help": "Prompts per sampling call (each with its samples_per_prompt completions)."}
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function (default: 1 each); the reward is their sum."}
    )
    min_p: float | None = field(default=None, metadata={"help": "Min-p sampling (unset: off), as in TRL."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "generate()'s repetition penalty (1.0: off)."})
    cache_implementation: str | None = field(default=None, metadata={"help": "generate()'s KV-cache implementation."})
    generation_kwargs: dict | None = field(
        default=None, metadata={"help": "More generate() keyword arguments, over the sampling keys (as in TRL)."}
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Subtracted from the reward of each sampled completion that does not end in EOS (TRL's)."},
    )
    reward_model_path: str | None = field(
        default=None, metadata={"help": "Not read (as in TRL 1.16): give the reward model in reward_funcs."}
    )
    use_vllm: bool = field(default=False, metadata={"help": "Refused when true: the plugin samples with generate()."})
    ds3_gather_for_generation: bool = field(default=True, metadata={"help": "Accepted for TRL; no effect."})
    vllm_model_impl: str = field(default="vllm", metadata={"help": "Accepted for TRL; no effect."})
    vllm_structured_outputs_regex: str | None = field(default=None, metadata={"help": "Accepted for TRL; no effect."})
    vllm_gpu_memory_utilization: float = field(default=0.55, metadata={"help": "Accepted for TRL; no effect."})
    vllm_mode: str = field(default="colocate", metadata={"help": "Accepted for TRL; no effect."})
    vllm_server_base_url: str | None = field(default=None, metadata={"help": "Accepted for TRL; no effect."})
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "Accepted for TRL; no effect."})
    vllm_server_port: int = field(default=8000, metadata={"help": "Accepted for TRL; no effect."})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "Accepted for TRL; no effect."})
    vllm_group_port: int = field(default=51216, metadata={"help": "Accepted for TRL; no effect."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "Accepted for TRL; no effect."})
    vllm_enable_sleep_mode: bool = field(default=False, metadata={"help": "Accepted for TRL; no effect."})

    def __post_init__(self):
        if isinstance(self.beta, (list, tuple)):  # OnlineDPOConfig's form: one β per epoch
            if len(self.beta) != 1:
                raise ConfigError(
                    f"beta {self.beta!r}: OnlinePreferenceTrainer takes one β (TRL's per-epoch list is not supported)."
                )
            self.beta = self.beta[0]
        if self.reward_model_path is not None:
            raise ConfigError(
                "reward_model_path is not read (TRL's OnlineDPOTrainer does not read it either): put the reward "
                f"model's path in reward_funcs instead, e.g. reward_funcs: [{self.reward_model_path}]."
            )
        check(self, ONLINE_RULES, types=False)  # PreferenceConfig's checks read every field's type, after its own
        if self.reference_update == "previous_round" and self.builds_reference:
            raise ConfigError(
                "reference_update: previous_round makes each round's reference from the policy in memory, and "
                "ref_model_name_or_path / ref_quantization load one from a checkpoint: use reference_update: fixed, "
                "or unset them."
            )
        super().__post_init__()

    def check_sampler(self) -> None:
        """`ConfigError` for `use_vllm: true`, at trainer construction as in TRL (the config itself constructs)."""
        if self.use_vllm:
            installed = "is not installed" if importlib.util.find_spec("vllm") is None else "is installed, but"
            raise ConfigError(
                f"use_vllm: true, and vLLM {installed} OnlinePreferenceTrainer samples with transformers' generate(): "
                "set use_vllm: false."
            )

    @property
    def generation(self) -> dict:
        """The sampling settings `generate` takes: the sampling keys that are set, then `generation_kwargs` over
        them (as TRL builds its generation config)."""
        keys = (
            "max_new_tokens",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repetition_penalty",
            "cache_implementation",
        )
        settings = {key: getattr(self, key) for key in keys if getattr(self, key) is not None}
        if settings["repetition_penalty"] == 1.0:
            del settings["repetition_penalty"]  # off, as generate() leaves it
        return settings | (self.generation_kwargs or {})
