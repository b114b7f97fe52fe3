"""`OnlinePreferenceConfig`: `PreferenceConfig` plus the on-policy loop's keys, validated at construction."""

from __future__ import annotations

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
}


@dataclass
class OnlinePreferenceConfig(PreferenceConfig):
    """`PreferenceConfig` for on-policy (iterative) training with `OnlinePreferenceTrainer`.

    Each of `rounds` rounds samples `samples_per_prompt` completions of each of `prompts_per_round` prompts from the
    policy (through the grouped `Completion-v0` environment), ranks them with the reward functions, builds pairs by
    `pair_rule` (dropping gaps of 0 or below `min_reward_margin`) and trains `epochs_per_round` passes over them with
    the configured objective (`loss_type`, as in `PreferenceConfig`). The reference is the initial policy
    (`reference_update: fixed`) or the policy at the start of each round (`previous_round`).
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

    def __post_init__(self):
        check(self, ONLINE_RULES)
        if self.reference_update == "previous_round" and self.builds_reference:
            raise ConfigError(
                "reference_update: previous_round makes each round's reference from the policy in memory, and "
                "ref_model_name_or_path / ref_quantization load one from a checkpoint: use reference_update: fixed, "
                "or unset them."
            )
        super().__post_init__()

    @property
    def generation(self) -> dict:
        """The sampling settings `generate` takes."""
        return {key: getattr(self, key) for key in ("max_new_tokens", "temperature", "top_p", "top_k")}
