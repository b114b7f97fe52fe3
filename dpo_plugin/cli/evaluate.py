"""`dpo-plugin eval --config recipes/eval.yaml`: a trained policy and its reference through the environments on
held-out data: preference accuracy, and the rewards and KL of sampled completions."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.loading import first_rows, load_preference_dataset
from ..data.model_folders import model_folder
from ..evaluation.evaluator import HeldoutEvaluator
from ..evaluation.heldout import EvaluationReport
from ..evaluation.rewards import RewardModelReward
from ..evaluation.scoring import as_text
from ..tasks.sentiment.gold import GOLD_TARGETS, GoldSentimentReward
from ..training.config import REFERENCE_QUANTIZATION_RULES, ReferenceQuantizationArguments
from ..training.reference import MIXED, RefQuantization, choose_reference, saved_mixed_reference
from ..utils.atomic import write_json
from ..utils.config_files import parse_config
from ..utils.devices import default_device
from ..utils.errors import ConfigError
from ..utils.validation import check, integer_at_least, number_above, one_of, required

RULES = {
    "eval_pairs": integer_at_least(0),
    "eval_generations": integer_at_least(0),
    "batch_size": integer_at_least(1),
    "sampling_batch_size": integer_at_least(1),
    "max_new_tokens": integer_at_least(1),
    "max_length": integer_at_least(2),
    "temperature": number_above(0.0, "(sampling)"),
    "gold_reward": one_of(("none", *GOLD_TARGETS)),
    **REFERENCE_QUANTIZATION_RULES,
}


@dataclass
class EvalConfig(ReferenceQuantizationArguments):
    """What `dpo-plugin eval` runs: a trained policy and its reference through the environments on held-out data."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The trained policy: a `dpo-plugin train` output folder (full model or LoRA adapters)."},
    )
    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The reference model. Default: for LoRA adapters, their base model with the adapters off; a full "
            "checkpoint needs it set (e.g. smollm2-135m-instruct)."
        },
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Local file or folder, built-in name, or hub id."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_test_split: str = field(default="test", metadata={"help": "The held-out split."})
    eval_pairs: int = field(default=300, metadata={"help": "Rank the first N held-out pairs (0: skip)."})
    eval_generations: int = field(
        default=64,
        metadata={"help": "Sample a completion for the prompts of the first N held-out pairs, per model (0: skip)."},
    )
    max_new_tokens: int = field(default=48, metadata={"help": "Longest sampled completion, in tokens."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature (1.0, with top_p 1 and top_k 0, samples π itself)."}
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0: off)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    gold_reward: str = field(
        default="none",
        metadata={
            "help": "Gold sentiment reward of sampled completions (classifier trained on Pang & Lee's human labels): "
            "`from_prompt` (the prompt asks for positive or negative), `positive`, `negative`, or `none`."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A sequence-classification reward model (num_labels=1) to rate samples."}
    )
    beta: float = field(default=0.1, metadata={"help": "β of the implicit reward β log π_θ/π_ref (reported only)."})
    batch_size: int = field(default=16, metadata={"help": "Pairs or texts per scoring call."})
    sampling_batch_size: int = field(
        default=64,
        metadata={"help": "Prompts per sampling call (generate's rows): large calls sample fastest."},
    )
    max_length: int | None = field(
        default=1024, metadata={"help": "Truncate prompt + completion to this many tokens when scoring."}
    )
    bf16: bool = field(default=False, metadata={"help": "Run the models under bfloat16 autocast."})
    seed: int = field(default=42, metadata={"help": "Seed of candidate order and sampling."})
    output_file: str = field(default="outputs/eval.json", metadata={"help": "Where the JSON report is written."})

    def __post_init__(self):
        # first: nothing else means anything without them
        required(self, "model_name_or_path", "dataset_name", hint="see recipes/eval.yaml")
        check(self, RULES)
        if self.eval_generations and self.gold_reward == "none" and not self.reward_model_name_or_path:
            raise ConfigError(
                "eval_generations > 0 needs a reward to rate the samples: set gold_reward or "
                "reward_model_name_or_path, or set eval_generations: 0."
            )

    def reference_quantization(self, policy_folder: str) -> tuple[str | None, RefQuantization]:
        """The reference checkpoint and how to hold it: as the config says, or for `mixed` the checkpoint and plan
        the run saved in `policy_folder` (`reference.save_mixed_plan`)."""
        if self.ref_quantization != MIXED:
            quantization = RefQuantization(
                self.ref_quantization, self.ref_bnb_4bit_compute_dtype, self.ref_bnb_4bit_use_double_quant
            )
            return self.ref_model_name_or_path, quantization
        checkpoint, quantization = saved_mixed_reference(policy_folder)
        if self.ref_model_name_or_path and model_folder(self.ref_model_name_or_path) != checkpoint:
            raise ConfigError(
                f"ref_quantization: mixed rebuilds the reference the run trained against, from {checkpoint}; "
                f"ref_model_name_or_path is {self.ref_model_name_or_path}: unset it."
            )
        return checkpoint, quantization


def evaluate(argv: list[str]) -> dict:
    """Run a trained policy and its reference through the environments on held-out data; print and write JSON."""
    _, config = parse_config((EvalConfig,), argv, "dpo-plugin eval")
    wanted = max(config.eval_pairs, config.eval_generations)
    raw = first_rows(
        load_preference_dataset(config.dataset_name, config.dataset_test_split, config.dataset_config), wanted
    )
    started = time.perf_counter()
    policy, reference, tokenizer = _load_policy_and_reference(config)
    pairs = as_text(raw, tokenizer)
    autocast = _autocast(config.bf16, policy.device)
    evaluator = HeldoutEvaluator(
        (policy, autocast),
        (reference.model, lambda: reference.context(autocast)),
        tokenizer,
        config.batch_size,
        config.max_length,
        config.sampling_batch_size,
    )
    report = EvaluationReport(pairs=min(config.eval_pairs, len(pairs)), accuracy={})
    if config.eval_pairs:
        report.accuracy = evaluator.accuracies(first_rows(pairs, config.eval_pairs), config.seed)
    rewards = {}
    if config.eval_generations:
        rewards = _sample_rewards(config, tokenizer)
        prompts = list(first_rows(pairs, config.eval_generations)["prompt"])
        generation = {k: getattr(config, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k")}
        for name in ("reference", "policy"):
            report.samples[name] = evaluator.samples(prompts, rewards, generation, config.seed, sample_from=name)
    print(report.table())
    results = {"config": asdict(config), "reference": _reference_summary(reference), **report.to_dict()}
    results["seconds"] = round(time.perf_counter() - started, 1)
    if "gold_sentiment" in rewards:
        summary = rewards["gold_sentiment"].classifier.summary()
        results["gold_sentiment_classifier"] = summary
        print(f"  gold sentiment classifier: {summary['description']}")
    write_json(Path(config.output_file), results)
    print(f"Wrote {config.output_file}")
    return results


def _load_policy_and_reference(config: EvalConfig):
    """The policy, its reference (`choose_reference`) and the tokenizer.

    LoRA adapters with no `ref_model_name_or_path` and no `ref_quantization` share one model: the reference is the
    policy, adapters off. Otherwise the reference is loaded as training loaded it (the adapters' base model or
    `ref_model_name_or_path`, in `ref_quantization`; `mixed`: the plan the run saved).
    """
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_folder(config.model_name_or_path)
    is_adapter = (Path(path) / "adapter_config.json").is_file()
    checkpoint, quantization = config.reference_quantization(path)
    if not is_adapter and not checkpoint:
        raise ConfigError(
            f"{path} is a full model, so eval cannot tell what it was trained against: set ref_model_name_or_path "
            "(e.g. smollm2-135m-instruct)."
        )
    auto_model = AutoPeftModelForCausalLM if is_adapter else AutoModelForCausalLM
    policy = auto_model.from_pretrained(path).to(default_device()).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    reference = choose_reference(policy, checkpoint=checkpoint, quantization=quantization, tokenizer=tokenizer)
    return policy, reference, tokenizer


def _reference_summary(reference) -> dict:
    """What the report was scored against: the reference in one line, how its weights are held (a mixed plan's
    per-layer precisions), and a separate reference's bytes in memory."""
    plan = reference.quantization.plan
    summary = {"description": reference.describe(), "quantization": reference.quantization.mode}
    if plan is not None:
        summary["plan"] = {"layers": plan.precisions, "bf16_embeddings": plan.bf16_embeddings}
    if reference.separate:
        summary["memory_bytes"] = reference.model.get_memory_footprint()
    return summary


def _autocast(bf16: bool, device: torch.device):
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def _sample_rewards(config: EvalConfig, tokenizer) -> dict:
    """The reward components that rate sampled completions: the gold sentiment reward and/or a reward model."""
    rewards = {}
    if config.gold_reward != "none":
        rewards["gold_sentiment"] = GoldSentimentReward(config.gold_reward, tokenizer)
    if config.reward_model_name_or_path:
        path = config.reward_model_name_or_path
        rewards["reward_model"] = RewardModelReward.from_pretrained(path, config.batch_size, config.max_length)
    return rewards
