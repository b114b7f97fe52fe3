"""The `dpo-plugin` console script: `train --config recipe.yaml [--key value ...]` and `assets`.

`train` parses a TRL-style YAML recipe (flat `DPOConfig` keys plus the plugin's fields) with TRL's own parser, so any
key can be overridden on the command line; it runs unchanged under `accelerate launch -m dpo_plugin.cli train ...`.
"""

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from .config import PreferenceConfig
from .data import ensure_assets, load_preference_dataset, resolve_model
from .evaluation import evaluate_heldout
from .reporting import plot_training_curves, write_json
from .trainer import PreferenceTrainer

logger = logging.getLogger("dpo_plugin")


@dataclass
class DataArguments(ScriptArguments):
    """TRL's `ScriptArguments` (dataset_name, dataset_config, splits) plus how much of the data a recipe uses."""

    max_train_pairs: int | None = field(
        default=None, metadata={"help": "Train on the first N pairs of the training split (all when unset)."}
    )
    heldout_eval_pairs: int = field(
        default=0,
        metadata={
            "help": "After training, rank the first N pairs of `dataset_test_split` with the reference and the "
            "trained policy and report both accuracies (0: skip)."
        },
    )
    heldout_batch_size: int = field(default=16, metadata={"help": "Pairs per batch when scoring held-out pairs."})


def _first(dataset, n: int | None):
    return dataset if n is None else dataset.select(range(min(n, len(dataset))))


def parse_recipe(argv: list[str]) -> tuple[DataArguments, PreferenceConfig, ModelConfig]:
    """`--config recipe.yaml` sets defaults, other `--key value` flags override them (TRL's `TrlParser`)."""
    parser = TrlParser((DataArguments, PreferenceConfig, ModelConfig), prog="dpo-plugin train")
    data_args, training_args, model_args = parser.parse_args_and_config(argv)
    if not data_args.dataset_name:
        parser.error("dataset_name is required: a local file or folder, a built-in name (sentiment-pairs), or a hub id")
    if not model_args.model_name_or_path:
        parser.error("model_name_or_path is required (e.g. smollm2-135m-instruct, the bundled offline model)")
    return data_args, training_args, model_args


def train(argv: list[str]) -> dict:
    """Train a recipe; with `heldout_eval_pairs`, also score held-out pairs. Writes the model, metrics and plot."""
    data_args, training_args, model_args = parse_recipe(argv)

    train_pairs = _first(
        load_preference_dataset(data_args.dataset_name, data_args.dataset_train_split, data_args.dataset_config),
        data_args.max_train_pairs,
    )
    heldout_pairs = None
    needs_test_split = data_args.heldout_eval_pairs > 0 or training_args.eval_strategy != "no"
    if needs_test_split:
        heldout_pairs = load_preference_dataset(
            data_args.dataset_name, data_args.dataset_test_split, data_args.dataset_config
        )
    model_path = resolve_model(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, revision=model_args.model_revision, dtype=dtype, attn_implementation=model_args.attn_implementation
    )
    trainer = PreferenceTrainer(
        model=model,
        args=training_args,
        train_dataset=train_pairs,
        eval_dataset=heldout_pairs if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )

    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_seconds = time.perf_counter() - started
    trainer.save_model(training_args.output_dir)

    results = {
        "recipe": {"data": asdict(data_args), "model": asdict(model_args), "loss_type": training_args.loss_type},
        "train_pairs": len(train_pairs),
        "train_seconds": round(train_seconds, 1),
        "log_history": trainer.state.log_history,
    }
    if data_args.heldout_eval_pairs > 0 and trainer.accelerator.is_main_process:
        started = time.perf_counter()
        report = evaluate_heldout(
            trainer, _first(heldout_pairs, data_args.heldout_eval_pairs), data_args.heldout_batch_size
        )
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


def assets(argv: list[str]) -> None:
    """Fetch the offline model and data into the cache (done automatically on first use, too)."""
    argparse.ArgumentParser(prog="dpo-plugin assets", description=assets.__doc__).parse_args(argv)
    for name, path in ensure_assets().items():
        print(f"{name:<20} {path}")


COMMANDS = {"train": train, "assets": assets}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        commands = ", ".join(COMMANDS)
        print(f"usage: dpo-plugin {{{commands}}} ...\n  dpo-plugin train --config recipes/quickstart.yaml")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
