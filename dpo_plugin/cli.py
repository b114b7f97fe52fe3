"""The `dpo-plugin` console script: `train`, `eval`, `compare`, `ppo`, `bench` (each `--config recipe.yaml
[--key value ...]`), `assets`.

Recipes are TRL-style YAML (flat `DPOConfig` keys plus the plugin's fields) read with TRL's own parser, so any key can
be overridden on the command line; `train` runs unchanged under `accelerate launch -m dpo_plugin.cli train ...`, or
launches itself when the recipe sets `num_processes` / `accelerate_config`.
"""

import argparse
import contextlib
import logging
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint
from trl import TrlParser

from .bench import bench
from .compare import compare
from .config import EvalConfig
from .data import ensure_assets, load_preference_dataset, resolve_model
from .evaluation import EvaluationReport, preference_accuracies, sampled_completions
from .launch import launch_training
from .policies import CompletionSampler
from .recipe import build_trainer, first_rows, parse_recipe
from .reference import load_reference
from .reporting import default_device, plot_training_curves, write_json
from .rewards import GoldSentimentReward
from .rlhf.recipe import build_ppo_trainer, load_reward_model, parse_ppo_recipe, training_prompts
from .scoring import SequenceScorer, as_text

logger = logging.getLogger("dpo_plugin")


def train(argv: list[str]) -> dict | None:
    """Train a recipe; with `heldout_eval_pairs`, also score held-out pairs. Writes the model, metrics and plot.

    With `num_processes` or `accelerate_config`, re-runs itself under `accelerate launch` (`launch.py`). Stopped by
    SIGTERM/SIGINT, it saves a checkpoint, writes no final outputs, says how to resume, and exits with 128 + signal.
    """
    data_args, training_args, model_args, launch_args = parse_recipe(argv)
    if launch_args.wants_launch:
        launch_training(argv, launch_args, "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no")
        return None
    resume_from = _resume_checkpoint(training_args)
    trainer, train_pairs, heldout_pairs = build_trainer(data_args, training_args, model_args)
    tokenizer = trainer.processing_class

    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - started
    if trainer.interrupted_by is not None:
        _exit_interrupted(trainer, argv)
    trainer.save_model(training_args.output_dir)

    results = {
        "recipe": {"data": asdict(data_args), "model": asdict(model_args), "loss_type": training_args.loss_type},
        "train_pairs": len(train_pairs),
        "reference": trainer.reference_report,
        "train_seconds": round(train_seconds, 1),
        "log_history": trainer.state.log_history,
    }
    if data_args.heldout_eval_pairs > 0 and trainer.accelerator.is_main_process:
        started = time.perf_counter()
        pairs = as_text(first_rows(heldout_pairs, data_args.heldout_eval_pairs), tokenizer)
        accuracy = preference_accuracies(
            *trainer.scorers(data_args.heldout_batch_size), pairs, data_args.heldout_batch_size
        )
        report = EvaluationReport(pairs=len(pairs), accuracy=accuracy)
        results["heldout"] = report.to_dict()
        results["heldout_seconds"] = round(time.perf_counter() - started, 1)
        print(report.table())
    if trainer.accelerator.is_main_process:
        output_dir = Path(training_args.output_dir)
        write_json(output_dir / "metrics.json", results)
        title = f"{', '.join(training_args.loss_type)} on {data_args.dataset_name}, β = {training_args.beta}"
        plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title)
        print(f"Wrote {output_dir / 'metrics.json'} and {output_dir / 'training_curves.png'}")
    return results


def _resume_checkpoint(training_args) -> str | None:
    """`resume_from_checkpoint` as a folder: `true`/`last` mean the newest complete checkpoint in `output_dir`."""
    value = training_args.resume_from_checkpoint
    if value is None or value.lower() not in ("true", "last"):
        return value
    checkpoint = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
    if checkpoint is None:
        raise ValueError(
            f"resume_from_checkpoint: {value} found no checkpoint-<step> folder in {training_args.output_dir}: "
            "pass a checkpoint folder, or drop the key to start afresh."
        )
    return checkpoint


def _exit_interrupted(trainer, argv: list[str]) -> None:
    """Say where the run stopped and how to resume it, then exit with 128 + the signal's number (as a shell does)."""
    signum = trainer.interrupted_by
    if trainer.accelerator.is_main_process:
        checkpoint = get_last_checkpoint(trainer.args.output_dir)
        print(
            f"Stopped by {signal.Signals(signum).name} at step {trainer.state.global_step}: checkpoint {checkpoint}; "
            "no final model or metrics were written. Resume with:\n"
            f"  dpo-plugin train {' '.join(argv)} --resume_from_checkpoint {checkpoint}"
        )
    sys.exit(128 + signum)


def ppo(argv: list[str]) -> list[dict]:
    """PPO against a reward model (`recipes/ppo.yaml`): writes the policy, value head, state and a training plot."""
    script_args, ppo_config, model_args = parse_ppo_recipe(argv)
    if not script_args.reward_model_name_or_path:
        raise ValueError(
            "reward_model_name_or_path is required: a sequence classifier with one output, e.g. the reward model "
            "`dpo-plugin compare` trains (outputs/compare/reward_model)."
        )
    reward_fn = load_reward_model(script_args.reward_model_name_or_path, script_args.reward_batch_size)
    trainer = build_ppo_trainer(ppo_config, model_args, reward_fn, training_prompts(script_args))
    log_history = trainer.train()
    output_dir = Path(ppo_config.output_dir)
    curves = (("score/mean", "reward-model score"), ("kl/mean", "KL(π‖π_ref) per completion"))
    title = f"PPO on {script_args.dataset_name}, KL coefficient {ppo_config.kl_coef:g}"
    plot_training_curves(log_history, output_dir / "training_curves.png", title, curves=curves)
    print(f"Wrote {output_dir} (policy, value head, ppo_state.json) and {output_dir / 'training_curves.png'}")
    return log_history


def assets(argv: list[str]) -> None:
    """Fetch the offline model and data into the cache (done automatically on first use, too)."""
    argparse.ArgumentParser(prog="dpo-plugin assets", description=assets.__doc__).parse_args(argv)
    for name, path in ensure_assets().items():
        print(f"{name:<20} {path}")


def evaluate(argv: list[str]) -> dict:
    """Run a trained policy and its reference through the environments on held-out data; print and write JSON."""
    parser = TrlParser((EvalConfig,), prog="dpo-plugin eval")
    (config,) = parser.parse_args_and_config(argv)
    for name in ("model_name_or_path", "dataset_name"):
        if not getattr(config, name):
            parser.error(f"{name} is required (see recipes/eval.yaml)")
    wanted = max(config.eval_pairs, config.eval_generations)
    raw = first_rows(
        load_preference_dataset(config.dataset_name, config.dataset_test_split, config.dataset_config), wanted
    )
    started = time.perf_counter()
    policy, reference, reference_context, tokenizer = _load_policy_and_reference(config)
    pairs = as_text(raw, tokenizer)
    autocast = _autocast(config.bf16, policy.device)
    scorers = [
        SequenceScorer(model, tokenizer, config.max_length, config.batch_size, context)
        for model, context in ((policy, autocast), (reference, reference_context))
    ]
    report = EvaluationReport(pairs=min(config.eval_pairs, len(pairs)), accuracy={})
    if config.eval_pairs:
        report.accuracy = preference_accuracies(
            *scorers, first_rows(pairs, config.eval_pairs), config.batch_size, config.seed
        )
    rewards = {}
    if config.eval_generations:
        rewards = _sample_rewards(config, tokenizer)
        prompts = list(first_rows(pairs, config.eval_generations)["prompt"])
        generation = {k: getattr(config, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k")}
        for name, model, context, kl_scorers in (
            ("reference", reference, reference_context, None),
            ("policy", policy, autocast, scorers),
        ):
            sampler = CompletionSampler(model, tokenizer, generation, context)
            report.samples[name] = sampled_completions(
                sampler, prompts, rewards, kl_scorers, config.batch_size, config.seed, f"Sampling from the {name}"
            )
    print(report.table())
    results = {"config": asdict(config), **report.to_dict(), "seconds": round(time.perf_counter() - started, 1)}
    if "gold_sentiment" in rewards:
        summary = rewards["gold_sentiment"].classifier.summary()
        results["gold_sentiment_classifier"] = summary
        print(f"  gold sentiment classifier: {summary['description']}")
    write_json(Path(config.output_file), results)
    print(f"Wrote {config.output_file}")
    return results


def _load_policy_and_reference(config: EvalConfig):
    """The policy, the reference and the context that makes a model call the reference's, and the tokenizer.

    LoRA adapters with no `ref_model_name_or_path` and no `ref_quantization` share one model: the reference is the
    policy, adapters off. Otherwise the reference is loaded as training loaded it (`reference.load_reference`).
    """
    path = resolve_model(config.model_name_or_path)
    device = default_device()
    is_adapter = (Path(path) / "adapter_config.json").is_file()
    policy = (AutoPeftModelForCausalLM if is_adapter else AutoModelForCausalLM).from_pretrained(path).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    autocast = _autocast(config.bf16, policy.device)
    if not is_adapter and not config.ref_model_name_or_path:
        raise ValueError(
            f"{path} is a full model, so eval cannot tell what it was trained against: set ref_model_name_or_path "
            "(e.g. smollm2-135m-instruct)."
        )
    if config.ref_model_name_or_path or config.ref_quantization != "none":
        checkpoint = config.ref_model_name_or_path or policy.peft_config["default"].base_model_name_or_path
        reference = load_reference(resolve_model(checkpoint), policy, tokenizer, config.ref_quantization)
        return policy, reference, autocast, tokenizer

    def adapters_off():
        stack = contextlib.ExitStack()
        stack.enter_context(autocast())
        stack.enter_context(policy.disable_adapter())
        return stack

    return policy, policy, adapters_off, tokenizer


def _autocast(bf16: bool, device: torch.device):
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def _sample_rewards(config: EvalConfig, tokenizer) -> dict:
    """The reward components that rate sampled completions: the gold sentiment reward and/or a reward model."""
    rewards = {}
    if config.gold_reward != "none":
        rewards["gold_sentiment"] = GoldSentimentReward(config.gold_reward, tokenizer)
    if config.reward_model_name_or_path:
        path = config.reward_model_name_or_path
        rewards["reward_model"] = load_reward_model(path, config.batch_size, config.max_length)
    return rewards


COMMANDS = {"train": train, "eval": evaluate, "compare": compare, "ppo": ppo, "bench": bench, "assets": assets}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        commands = ", ".join(COMMANDS)
        print(
            f"usage: dpo-plugin {{{commands}}} ...\n  dpo-plugin train --config recipes/quickstart.yaml\n"
            "  dpo-plugin eval --config recipes/eval.yaml\n"
            "  dpo-plugin compare --config recipes/compare_dpo_ppo.yaml\n"
            "  dpo-plugin bench memory --config recipes/dpo_4bit_ref.yaml"
        )
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
