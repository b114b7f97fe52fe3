"""`dpo-plugin bench heads`: the objective head against TRL's, per objective (also run by `bench memory
--bench_versus_trl true`).

Each contender trains the recipe for `bench_steps` steps in a fresh process, on the same batches: TRL's
`DPOTrainer` with its nearest loss (its fused, tiled LM head), `PreferenceTrainer` with the chunked head, and with
full logits at completion positions. Reported: the growth of peak resident memory while training, over a baseline
with every weight resident (on a GPU, peak CUDA memory too), seconds per step, and the logged losses, to show they
compute the same thing.
"""

from __future__ import annotations

import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ...data.loading import first_rows
from ...objectives.losses import OBJECTIVES
from ...training.recipe import build_trainer, load_split, parse_recipe
from ...utils.atomic import write_json
from ...utils.devices import device_name
from ...utils.quiet import library_progress_bars_off, quiet_library_warnings
from ...utils.run_folder import run_file
from ...utils.validation import check, integer_at_least, some_of
from .measuring import MB, measure_training
from .trl_contender import TRL_COUNTERPART, trl_dpo_trainer

CONTENDERS = ("TRL DPOTrainer", "PreferenceTrainer, chunked head", "PreferenceTrainer, full logits")


@dataclass
class HeadsBenchArguments:
    """What `dpo-plugin bench heads` measures, on top of a training recipe."""

    bench_objectives: list[str] = field(
        default_factory=lambda: ["dpo", "ipo", "tdpo2"],
        metadata={"help": f"Plugin objectives to compare, each against TRL's nearest loss: {list(OBJECTIVES)}."},
    )
    bench_steps: int = field(default=4, metadata={"help": "Optimizer steps of each contender's short training run."})
    bench_output: str = field(
        default="outputs/bench_heads.json", metadata={"help": "Where the JSON results are written."}
    )

    def __post_init__(self):
        check(self, {"bench_steps": integer_at_least(1), "bench_objectives": some_of(OBJECTIVES)})


def heads(argv: list[str]) -> dict:
    """Compare the heads on the recipe `argv` describes (`versus_trl`)."""
    *_, bench_args = parse_recipe(argv, extra=(HeadsBenchArguments,), prog="dpo-plugin bench heads")
    with run_file(bench_args.bench_output, "bench_output"):  # held by this benchmark alone while it runs
        return versus_trl(argv, bench_args)


def versus_trl(argv: list[str], bench_args: HeadsBenchArguments) -> dict:
    """Every contender of every objective in its own process; print a table and write JSON. `bench_args` is what
    `argv` parsed into: `HeadsBenchArguments`, or the subclass `bench memory` parses."""
    spawn = multiprocessing.get_context("spawn")
    plan = [(objective, contender) for objective in bench_args.bench_objectives for contender in CONTENDERS]
    rows = []
    for index, (objective, contender) in enumerate(plan, 1):
        print(f"[{index}/{len(plan)}] {objective}: {contender}, {bench_args.bench_steps} training steps")
        with ProcessPoolExecutor(1, spawn, initializer=quiet_library_warnings) as fresh_process:
            rows.append(fresh_process.submit(measure_contender, argv, bench_args, objective, contender).result())
    results = {"argv": argv, "device": device_name(), "contenders": rows}
    print(heads_table(rows))
    write_json(Path(bench_args.bench_output), results)
    print(f"Wrote {bench_args.bench_output}")
    return results


def measure_contender(argv: list[str], bench_args: HeadsBenchArguments, objective: str, contender: str) -> dict:
    """In this (fresh) process: build `contender` for `objective` from the recipe (`argv` parsed again, with
    `bench_args`' class), train `bench_steps` steps, measure."""
    library_progress_bars_off()
    steps = bench_args.bench_steps
    with tempfile.TemporaryDirectory() as output_dir:
        overrides = ["--loss_type", objective, "--max_steps", str(steps), "--output_dir", output_dir]
        overrides += ["--save_strategy", "no", "--report_to", "none", "--heldout_eval_pairs", "0"]
        overrides += ["--logging_steps", "1", "--chunked_head", str(contender.endswith("chunked head")).lower()]
        data_args, args, model_args, *_ = parse_recipe([*argv, *overrides], extra=(type(bench_args),))
        if contender == CONTENDERS[0]:
            train_split = load_split(data_args, data_args.dataset_train_split, args.seed)
            trainer = trl_dpo_trainer(first_rows(train_split, data_args.max_train_pairs), model_args, args, objective)
        else:
            trainer, _, _ = build_trainer(data_args, args, model_args)
        measured = measure_training(trainer)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "objective": objective,
        "contender": contender,
        "trl_loss": TRL_COUNTERPART[objective] if contender == CONTENDERS[0] else None,
        "rss_after_setup_bytes": measured.setup_rss_bytes,
        "peak_rss_growth_bytes": measured.peak_rss_bytes - measured.setup_rss_bytes,
        "peak_cuda_bytes": measured.peak_cuda_bytes,
        "seconds_per_step": measured.seconds / steps,
        "losses": losses,
    }


def heads_table(rows: list[dict]) -> str:
    """The rows as a Markdown table, each memory figure also as a fraction of TRL's for the same objective."""
    trl = {row["objective"]: row for row in rows if row["contender"] == CONTENDERS[0]}
    lines = [
        "| objective | contender | peak RSS growth MB | × TRL's | peak CUDA MB | × TRL's | s/step "
        "| loss, step 1 → last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = trl.get(row["objective"])
        growth = row["peak_rss_growth_bytes"]
        ratio = f"{growth / base['peak_rss_growth_bytes']:.2f}" if base and base["peak_rss_growth_bytes"] else ""
        cuda, cuda_ratio = "—", ""
        if row["peak_cuda_bytes"] is not None:
            cuda = f"{row['peak_cuda_bytes'] / MB:.0f}"
            cuda_ratio = f"{row['peak_cuda_bytes'] / base['peak_cuda_bytes']:.2f}" if base else ""
        name = f"{row['contender']} ({row['trl_loss']})" if row["trl_loss"] else row["contender"]
        loss = f"{row['losses'][0]:.5f} → {row['losses'][-1]:.5f}" if row["losses"] else "—"
        lines.append(
            f"| {row['objective']} | {name} | {growth / MB:.0f} | {ratio} | {cuda} | {cuda_ratio} "
            f"| {row['seconds_per_step']:.2f} | {loss} |"
        )
    return "\n".join(lines)
