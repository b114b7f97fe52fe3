"""`dpo-plugin bench memory`: what a quantized reference saves, measured for every mode in one run.

Each mode (none / nf4 / fp4 / int8 / mixed, or precomputed reference log-probs) trains the recipe for a few steps in a
fresh process, so that the peak resident memory of one mode never carries over into the next; CUDA peaks are reset per
process too. With `--bench_versus_trl true` it runs the head-to-head of `bench heads` instead (`heads.py`).
"""

from __future__ import annotations

import multiprocessing
import resource
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ...training.config import REF_BYTES_BUDGET
from ...training.recipe import build_trainer, parse_recipe
from ...training.reference import MIXED, REF_PRECISIONS
from ...utils.atomic import write_json
from ...utils.devices import device_name
from ...utils.quiet import library_progress_bars_off, quiet_library_warnings
from ...utils.run_folder import run_file
from ...utils.validation import check, each, some_of
from .heads import HeadsBenchArguments, versus_trl
from .measuring import MB, measure_training

BENCH_MODES = (*REF_PRECISIONS, "precomputed")


@dataclass
class MemoryBenchArguments(HeadsBenchArguments):
    """What `dpo-plugin bench memory` measures, on top of a training recipe; bench_objectives (from
    `HeadsBenchArguments`) applies with bench_versus_trl only."""

    bench_modes: list[str] = field(
        default_factory=lambda: list(REF_PRECISIONS),
        metadata={
            "help": f"References to compare, each in its own process: a ref_quantization of {list(REF_PRECISIONS)} "
            "(`mixed` once per budget of bench_ref_budgets), or `precomputed` (reference log-probs computed before "
            "training; none held while training)."
        },
    )
    bench_ref_budgets: list[float] = field(
        default_factory=lambda: [0.33, 0.35, 0.4],
        metadata={"help": "The ref_bytes_budget of each `mixed` reference measured: the gap-against-bytes curve."},
    )
    bench_versus_trl: bool = field(
        default=False,
        metadata={
            "help": "Instead of reference quantizations: per objective of bench_objectives, TRL's DPOTrainer (its "
            "nearest loss), PreferenceTrainer with the chunked head, and with full logits, each in a fresh process "
            "on the same batches: what `dpo-plugin bench heads` runs."
        },
    )
    bench_steps: int = field(default=4, metadata={"help": "Optimizer steps of the short training run per mode."})
    bench_output: str = field(
        default="outputs/bench_memory.json", metadata={"help": "Where the JSON results are written."}
    )

    def __post_init__(self):
        check(self, {"bench_modes": some_of(BENCH_MODES), "bench_ref_budgets": each(REF_BYTES_BUDGET)})
        super().__post_init__()


def memory(argv: list[str]) -> dict:
    """Train the recipe briefly once per reference quantization and compare memory; print a table, write JSON
    (`bench_output`, held by this benchmark alone while it runs)."""
    *_, bench_args = parse_recipe(argv, extra=(MemoryBenchArguments,), prog="dpo-plugin bench memory")
    with run_file(bench_args.bench_output, "bench_output"):
        return (versus_trl if bench_args.bench_versus_trl else _per_reference)(argv, bench_args)


def _per_reference(argv: list[str], bench_args: MemoryBenchArguments) -> dict:
    spawn = multiprocessing.get_context("spawn")
    plan = [
        (mode, budget)
        for mode in bench_args.bench_modes
        for budget in (bench_args.bench_ref_budgets if mode == MIXED else [None])
    ]
    rows = []
    for index, (mode, budget) in enumerate(plan, 1):
        print(f"[{index}/{len(plan)}] reference {mode_label(mode, budget)}: {bench_args.bench_steps} training steps")
        with ProcessPoolExecutor(1, spawn, initializer=quiet_library_warnings) as fresh_process:
            rows.append(fresh_process.submit(measure_mode, argv, mode, bench_args.bench_steps, budget).result())
    results = {"argv": argv, "device": device_name(), "modes": rows}
    print(memory_table(rows))
    write_json(Path(bench_args.bench_output), results)
    print(f"Wrote {bench_args.bench_output}")
    return results


def mode_label(mode: str, budget: float | None) -> str:
    return f"{mode} {budget:g}" if budget is not None else mode


def measure_mode(argv: list[str], mode: str, steps: int, budget: float | None = None) -> dict:
    """In this (fresh) process: build the recipe's trainer with `ref_quantization=mode` (`mixed` within `budget`; or
    precomputed reference log-probs, whose pass before training is outside the training peak), train `steps` steps,
    and return the reference's and policy's bytes (and a mixed reference's plan), peak RSS, peak CUDA memory, seconds
    per step and the measured gap."""
    library_progress_bars_off()
    with tempfile.TemporaryDirectory() as output_dir:
        precomputed = ["--precompute_ref_log_probs", "true", "--ref_quantization", "none"]  # whatever the recipe says
        reference = precomputed if mode == "precomputed" else ["--ref_quantization", mode]
        reference += ["--ref_bytes_budget", str(budget)] if budget is not None else []
        overrides = [*reference, "--max_steps", str(steps), "--output_dir", output_dir]
        overrides += ["--save_strategy", "no", "--report_to", "none", "--heldout_eval_pairs", "0"]
        data_args, training_args, model_args, _, _ = parse_recipe(
            [*argv, *overrides], extra=(MemoryBenchArguments,), prog="dpo-plugin bench memory"
        )
        trainer, _, _ = build_trainer(data_args, training_args, model_args)
        measured = measure_training(trainer)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    reference = trainer.accelerator.unwrap_model(trainer.ref_model) if trainer.ref_model is not None else None
    plan = trainer.reference.quantization.plan if trainer.reference is not None else None
    return {
        "ref_quantization": mode,
        "ref_bytes_budget": budget,
        "reference": trainer.reference.describe() if trainer.reference is not None else "none (reference-free)",
        "plan": plan.describe() if plan is not None else None,
        "reference_bytes": reference.get_memory_footprint() if reference is not None else 0,
        "policy_bytes": policy.get_memory_footprint(),
        "rss_after_setup_bytes": measured.setup_rss_bytes,
        "peak_rss_training_bytes": measured.peak_rss_bytes,
        # Linux reports KiB, and updates the high-water mark lazily: it can trail an RSS sampled a moment before
        "peak_rss_bytes": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, measured.peak_rss_bytes),
        "peak_cuda_bytes": measured.peak_cuda_bytes,
        "seconds_per_step": measured.seconds / steps,
        "gap": (trainer.reference_report or {}).get("gap"),
    }


def memory_table(rows: list[dict]) -> str:
    """The measured rows as a Markdown table; the reference's bytes also as a fraction of the `none` row's."""
    baseline = next((row["reference_bytes"] for row in rows if row["ref_quantization"] == "none"), 0)
    lines = [
        "| reference | reference MB | × full precision | policy MB | RSS after setup MB | peak RSS training MB "
        "| peak RSS process MB | peak CUDA MB | s/step | mean \\|Δ log π_ref(y)\\| | token KL |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row['reference_bytes'] / baseline:.2f}" if baseline else "—"
        cuda = f"{row['peak_cuda_bytes'] / MB:.0f}" if row["peak_cuda_bytes"] is not None else "—"
        gap = row["gap"] or {}
        diff = f"{gap['logp_abs_diff_mean']:.3f}" if gap else "—"
        kl = f"{gap['token_kl_mean']:.4f}" if gap else "—"
        sizes = f"{row['reference_bytes'] / MB:.1f} | {ratio} | {row['policy_bytes'] / MB:.1f}"
        label = mode_label(row["ref_quantization"], row.get("ref_bytes_budget"))
        lines.append(
            f"| {label} | {sizes} | {row['rss_after_setup_bytes'] / MB:.0f} "
            f"| {row['peak_rss_training_bytes'] / MB:.0f} | {row['peak_rss_bytes'] / MB:.0f} | {cuda} "
            f"| {row['seconds_per_step']:.2f} | {diff} | {kl} |"
        )
    return "\n".join(lines)
