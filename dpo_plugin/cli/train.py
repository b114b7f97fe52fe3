"""`dpo-plugin train --config recipe.yaml`: train a recipe, optionally score held-out pairs, write the outputs."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..training.interruption import Interrupted, StopSignals
from ..training.launch import LAUNCHED_ENV, launch_training, process_group_ended
from ..training.recipe import parse_recipe
from ..utils.errors import ConfigError, UserError


def train(argv: list[str]) -> dict | None:
    """Train a recipe; with `heldout_eval_pairs`, also score held-out pairs. Writes the model, metrics and plot.

    The output folder is held for this run alone (`run_folder`). With `num_processes` or `accelerate_config`,
    re-runs itself under `accelerate launch` (`training/launch.py`). Stopped by SIGTERM/SIGINT, it saves a
    checkpoint, writes no final outputs, says how to resume, and exits with 128 + signal.
    """
    data_args, training_args, model_args, launch_args = parse_recipe(argv)
    from ..utils.run_folder import run_folder

    with run_folder(training_args.output_dir):
        if not os.environ.get(LAUNCHED_ENV):  # the launcher checked it for the processes it launched
            start_over_or_refuse(training_args)
        if launch_args.wants_launch:
            mixed_precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no"
            launch_training(argv, launch_args, mixed_precision)
            return None
        with process_group_ended():
            return _train(argv, data_args, training_args, model_args)


def _train(argv, data_args, training_args, model_args) -> dict:
    from ..data.loading import first_rows  # imported here, after parsing, so that `--help` answers sooner
    from ..evaluation.heldout import EvaluationReport
    from ..evaluation.scoring import as_text
    from ..training.recipe import build_trainer
    from ..utils.atomic import write_json
    from ..utils.plots import plot_training_curves

    try:
        trainer, train_pairs, heldout_pairs = build_trainer(data_args, training_args, model_args)
    except Interrupted as stopped:  # e.g. during the mixed reference's calibration
        print(
            f"Stopped by {signal.Signals(stopped.signal_number).name} during {stopped.what}, before training: "
            f"nothing was trained or written to {training_args.output_dir}."
        )
        sys.exit(128 + stopped.signal_number)
    heldout, evaluator = None, None
    if data_args.heldout_eval_pairs > 0 and trainer.accelerator.is_main_process:
        heldout = as_text(first_rows(heldout_pairs, data_args.heldout_eval_pairs), trainer.processing_class)
        evaluator = heldout_evaluator(trainer, heldout, data_args.heldout_batch_size)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_seconds = time.perf_counter() - started
    if trainer.finished_already:
        print(
            f"{training_args.resume_from_checkpoint} is at the last step of this run: nothing was trained, and the "
            f"outputs in {training_args.output_dir} are left as they are."
        )
        return {"finished_already": True}
    if trainer.interrupted_by is not None:
        _exit_interrupted(trainer, argv)
    results = {
        "recipe": {"data": asdict(data_args), "model": asdict(model_args), "loss_type": training_args.loss_type},
        "train_pairs": len(train_pairs),
        "reference": trainer.reference_report,
        "train_seconds": round(train_seconds, 1),
        "log_history": trainer.state.log_history,
    }
    with StopSignals() as stop:  # scoring finishes; a signal meanwhile keeps the final outputs from being written
        if evaluator is not None:
            started = time.perf_counter()
            report = EvaluationReport(pairs=len(heldout), accuracy=evaluator.accuracies(heldout))
            results["heldout"] = report.to_dict()
            results["heldout_seconds"] = round(time.perf_counter() - started, 1)
            print(report.table())
    if stop.received is not None:
        checkpoints = sorted(path.name for path in Path(training_args.output_dir).glob("checkpoint-*"))
        kept = f"its checkpoints ({', '.join(checkpoints[-2:])}) are kept" if checkpoints else "it saved no checkpoint"
        print(
            f"Stopped by {signal.Signals(stop.received).name} after training, during held-out scoring: no final model "
            f"or metrics were written, so {training_args.output_dir} does not read as a finished run; {kept}."
        )
        sys.exit(128 + stop.received)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        output_dir = Path(training_args.output_dir)
        write_json(output_dir / "metrics.json", results)
        title = f"{', '.join(training_args.loss_type)} on {data_args.dataset_name}, β = {training_args.beta}"
        plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title)
        print(f"Wrote {output_dir / 'metrics.json'} and {output_dir / 'training_curves.png'}")
    return results


FINAL_OUTPUTS = ("metrics.json", "training_curves.png", "model.safetensors", "adapter_model.safetensors")


def start_over_or_refuse(args) -> None:
    """A rerun never silently starts over: into an `output_dir` holding another run's checkpoints or final outputs,
    without `resume_from_checkpoint`, it is refused (`UserError` naming both ways on), or with
    `overwrite_output_dir` those are deleted first."""
    folder = Path(args.output_dir)
    earlier = sorted(folder.glob("checkpoint-*")) + [
        folder / name for name in FINAL_OUTPUTS if (folder / name).exists()
    ]
    if args.resume_from_checkpoint or not earlier:
        return
    if not args.overwrite_output_dir:
        checkpoints = [path.name for path in earlier if path.name.startswith("checkpoint-")]
        held = f"checkpoints of a run ({', '.join(checkpoints[-3:])})" if checkpoints else "a finished run"
        resume = " resume it with --resume_from_checkpoint last, or" if checkpoints else ""
        raise UserError(
            f"{folder} holds {held}:{resume} start over with --overwrite_output_dir true (which deletes it), or give "
            "another output_dir."
        )
    for path in earlier:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    print(f"overwrite_output_dir: deleted {len(earlier)} outputs of an earlier run in {folder}.")


def heldout_evaluator(trainer, heldout, batch_size: int = 16):
    """The trained policy against the reference it trains against, in training precision, built before training:

    - with precomputed reference log-probs no reference is held while training, so the held-out pairs' are scored
      now, from the policy as it starts;
    - with a quantized reference, the policy as it starts (π_0, full precision) is scored now too, so that held-out
      pairs are also ranked by log π_θ − log π_0, what training changed, without the quantization error in it.
    """
    from ..evaluation.evaluator import HeldoutEvaluator
    from ..training.reference import INITIAL_POLICY

    reference = trainer.reference
    if reference is None:
        raise ConfigError(
            "heldout_eval_pairs scores against the reference, but this run is reference_free: set "
            "heldout_eval_pairs: 0 and use `dpo-plugin eval` with ref_model_name_or_path."
        )
    policy = trainer.accelerator.unwrap_model(trainer.model)
    evaluator = HeldoutEvaluator(
        (policy, trainer.accelerator.autocast),
        (reference.model, trainer.reference_context),
        trainer.processing_class,
        batch_size,
        trainer.args.max_length,
    )
    evaluator.keep_scores_before_training(
        heldout, reference=reference.kind == INITIAL_POLICY, start=reference.quantization.mode != "none"
    )
    return evaluator


def _exit_interrupted(trainer, argv: list[str]) -> None:
    """Say where the run stopped and how to resume it, then exit with 128 + the signal's number (as a shell does)."""
    from transformers.trainer_utils import get_last_checkpoint

    signum = trainer.interrupted_by
    if trainer.accelerator.is_main_process:
        checkpoint = get_last_checkpoint(trainer.args.output_dir)
        print(
            f"Stopped by {signal.Signals(signum).name} at step {trainer.state.global_step}: checkpoint {checkpoint}; "
            "no final model or metrics were written. Resume with:\n"
            f"  dpo-plugin train {' '.join(argv)} --resume_from_checkpoint {checkpoint}"
        )
    sys.exit(128 + signum)
