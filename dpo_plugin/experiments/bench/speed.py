"""`dpo-plugin bench speed`: PreferenceTrainer against TRL's DPOTrainer on the same model, data and settings.

In one process, contenders take turns over `bench_rounds` rounds, each training `bench_warmup` untimed steps then
`bench_steps` timed ones on the same token batches: the raw compute bound (a plain PyTorch loop doing only the
policy forward+backward with full logits, the reference forward in inference mode and the optimizer step, no
trainer), then per objective TRL's `DPOTrainer` with its nearest loss (`sigmoid` for dpo and TDPO, `ipo` for ipo)
and `PreferenceTrainer`. A step's time runs from the end of the previous step to the end of this one, so data
loading, logging and everything else a trainer does between steps count.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

import torch
from peft import get_peft_model
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback
from trl import get_peft_config

from ...objectives.logprobs import log_probs_from_logits, token_logps
from ...objectives.losses import OBJECTIVES, dpo_loss
from ...training.recipe import build_trainer, load_policy, parse_recipe
from ...training.reference import Reference, choose_reference
from ...utils.atomic import write_json
from ...utils.devices import device_name
from ...utils.quiet import library_progress_bars_off
from ...utils.run_folder import run_file
from ...utils.validation import check, integer_at_least, some_of
from .flops import dense_matmul_rate, model_flops_per_step
from .measuring import synchronized_now
from .trl_contender import TRL_COUNTERPART, trl_dpo_trainer


@dataclass
class SpeedBenchArguments:
    """What `dpo-plugin bench speed` measures, on top of a training recipe."""

    bench_objectives: list[str] = field(
        default_factory=lambda: ["dpo", "ipo", "tdpo2"],
        metadata={"help": f"Plugin objectives to time, each against TRL's nearest loss: {list(OBJECTIVES)}."},
    )
    bench_steps: int = field(default=4, metadata={"help": "Timed optimizer steps per contender and round."})
    bench_warmup: int = field(default=1, metadata={"help": "Untimed steps at the start of every turn."})
    bench_rounds: int = field(default=2, metadata={"help": "Rounds in which the contenders take turns."})
    bench_output: str = field(default="outputs/bench_speed.json", metadata={"help": "Where the JSON is written."})

    def __post_init__(self):
        check(
            self,
            {
                "bench_objectives": some_of(OBJECTIVES),
                "bench_steps": integer_at_least(1),
                "bench_rounds": integer_at_least(1),
                "bench_warmup": integer_at_least(0),
            },
        )


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, end to end: from the previous step's end (or the start of training)."""

    progress = None  # the turn's progress bar, advanced once per step

    def on_train_begin(self, args, state, control, **kwargs):
        self.times: list[float] = []
        self._last = synchronized_now()

    def on_step_end(self, args, state, control, **kwargs):
        now = synchronized_now()
        self.times.append(now - self._last)
        self._last = now
        self.progress.update(1)


class TrainerContender:
    """A trainer timed through `train()` for a given number of steps (each turn restarts on the same batches)."""

    def __init__(self, trainer):
        self.trainer, self.timer = trainer, StepTimer()
        trainer.add_callback(self.timer)
        trainer.remove_callback(PrinterCallback)  # the turn's progress bar is the output, not a dict per step

    def run(self, steps: int, progress) -> list[float]:
        self.trainer.args.max_steps = steps
        self.timer.progress = progress
        self.trainer.train()
        return self.timer.times


class RawBound:
    """The least a DPO step must compute, with no trainer: policy forward (full logits) and backward, reference
    forward in inference mode, an AdamW step, in the recipe's precision, on the trainer's own token batches."""

    def __init__(self, policy, reference: Reference, batches, args):
        self.policy, self.reference, self.batches, self.args = policy, reference, batches, args
        trainable = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
        if args.gradient_checkpointing:
            policy.gradient_checkpointing_enable(args.gradient_checkpointing_kwargs)

    def run(self, steps: int, progress) -> list[float]:
        times, last = [], synchronized_now()
        per_step = self.args.gradient_accumulation_steps
        for step in range(steps):
            for batch in self.batches[step * per_step : (step + 1) * per_step]:
                self._micro_step(batch, per_step)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            now = synchronized_now()
            times.append(now - last)
            last = now
            progress.update(1)
        return times

    def _micro_step(self, batch, accumulation: int) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its DPO loss (detached)."""
        labels = batch["input_ids"][:, 1:].masked_fill(batch["completion_mask"][:, 1:] == 0, -100)
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        autocast = torch.autocast(self.policy.device.type, dtype=torch.bfloat16, enabled=self.args.bf16)
        with torch.inference_mode(), self.reference.context(), autocast:
            ref_logits = self.reference.model(**kwargs).logits[:, :-1]
            ref_logps = token_logps(log_probs_from_logits(ref_logits), labels).sum(-1)
        with autocast:
            logits = self.policy(**kwargs).logits[:, :-1]
        logps = token_logps(log_probs_from_logits(logits), labels).sum(-1)
        ratios = (logps - ref_logps.clone()).chunk(2)
        loss = dpo_loss(*ratios, self.args.beta).losses.mean()
        (loss / accumulation).backward()
        return loss.detach()


def speed(argv: list[str]) -> dict:
    """Time TRL, the plugin and the raw bound in alternating turns; print a table and write JSON (`bench_output`,
    held by this benchmark alone while it runs)."""
    *_, bench_args = parse_recipe(argv, extra=(SpeedBenchArguments,), prog="dpo-plugin bench speed")
    with run_file(bench_args.bench_output, "bench_output"):
        return _time_contenders(argv, bench_args)


def _time_contenders(argv: list[str], bench_args: SpeedBenchArguments) -> dict:
    steps_per_turn = bench_args.bench_warmup + bench_args.bench_steps
    library_progress_bars_off()
    with tempfile.TemporaryDirectory() as output_dir:
        print(f"Building the contenders ({', '.join(bench_args.bench_objectives)}: TRL and the plugin each) ...")
        contenders, batch_tokens, pairs_per_step, flops_per_step, dtype = _contenders(
            argv, bench_args, steps_per_turn, output_dir
        )
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for round_index in range(bench_args.bench_rounds):
            for name, contender in contenders.items():
                turn = f"round {round_index + 1}/{bench_args.bench_rounds}: {name}"
                with tqdm(total=steps_per_turn, desc=turn, unit="step", leave=True) as progress:
                    times[name] += contender.run(steps_per_turn, progress)[bench_args.bench_warmup :]
    tokens_per_step = mean(batch_tokens[bench_args.bench_warmup :])
    rows = _rows(times, bench_args.bench_objectives, pairs_per_step, tokens_per_step)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    matmul_rate = dense_matmul_rate(device, dtype)
    for row in rows:
        row["model_flops_per_second"] = flops_per_step / row["seconds_per_step"]
        row["fraction_of_matmul_rate"] = row["model_flops_per_second"] / matmul_rate
    results = {"argv": argv, "device": device_name(), "pairs_per_step": pairs_per_step, "rows": rows}
    results |= {
        "model_flops_per_step": flops_per_step,
        "matmul_flops_per_second": matmul_rate,
        "matmul_dtype": str(dtype),
    }
    results["step_seconds"] = times
    print(speed_table(rows))
    print(
        f"Model FLOPs per step {flops_per_step / 1e12:.2f} T (counted as dpo_plugin/experiments/bench/flops.py says); "
        f"this machine's dense {str(dtype).removeprefix('torch.')} matmul rate {matmul_rate / 1e12:.2f} TFLOP/s."
    )
    write_json(Path(bench_args.bench_output), results)
    print(f"Wrote {bench_args.bench_output}")
    return results


def _contenders(argv, bench_args, steps_per_turn: int, output_dir: str):
    """The raw bound, then TRL's and the plugin's trainer per objective; the token counts of the timed batches."""
    overrides = ["--output_dir", output_dir, "--save_strategy", "no", "--report_to", "none"]
    overrides += ["--heldout_eval_pairs", "0", "--logging_steps", "1", "--disable_tqdm", "true"]
    contenders: dict = {}
    for objective in bench_args.bench_objectives:
        data_args, args, model_args, _, _ = parse_recipe(
            [*argv, *overrides, "--loss_type", objective], extra=(SpeedBenchArguments,), prog="dpo-plugin bench speed"
        )
        plugin, train_pairs, _ = build_trainer(data_args, args, model_args)
        if not contenders:
            batches = _batches(plugin, steps_per_turn * args.gradient_accumulation_steps)
            contenders["raw bound"] = _raw_bound(plugin, batches, model_args, args)
            step_tokens = [
                sum(int(b["attention_mask"].sum()) for b in batches[i : i + args.gradient_accumulation_steps])
                for i in range(0, len(batches), args.gradient_accumulation_steps)
            ]
            pairs_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            per_step = batches[bench_args.bench_warmup * args.gradient_accumulation_steps :]
            timed_steps = len(per_step) // args.gradient_accumulation_steps
            flops_per_step = model_flops_per_step(plugin.model, per_step) / timed_steps
            dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
        trl_loss = TRL_COUNTERPART[objective]
        contenders[f"{objective}: TRL DPOTrainer ({trl_loss})"] = TrainerContender(
            trl_dpo_trainer(train_pairs, model_args, args, objective)
        )
        contenders[f"{objective}: PreferenceTrainer"] = TrainerContender(plugin)
    return contenders, step_tokens, pairs_per_step, flops_per_step, dtype


def _batches(trainer, count: int) -> list[dict]:
    """The first `count` batches the trainer's own dataloader yields, on its device."""
    batches = []
    for batch in trainer.get_train_dataloader():
        batches.append({key: value.to(trainer.args.device) for key, value in batch.items()})
        if len(batches) == count:
            return batches
    raise ValueError(f"The recipe's training data gives fewer than {count} batches: raise max_train_pairs.")


def _raw_bound(plugin, batches, model_args, args) -> RawBound:
    """A fresh policy (with the recipe's LoRA adapters) against the reference the plugin trains against: its separate
    reference (shared, read-only), else the policy's own base with the adapters off, else a frozen copy (where the
    plugin precomputes reference log-probs)."""
    policy, _ = load_policy(model_args, args.device)
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        policy = get_peft_model(policy, peft_config)
    policy.to(args.device).train()
    separate = plugin.reference is not None and plugin.reference.separate
    reference = choose_reference(policy, plugin.accelerator.unwrap_model(plugin.ref_model) if separate else None)
    return RawBound(policy, reference, batches, args)


def _rows(times: dict[str, list[float]], objectives: list[str], pairs_per_step: int, tokens_per_step: float):
    raw = mean(times["raw bound"])
    rows = [_row("raw bound", times["raw bound"], pairs_per_step, tokens_per_step)]
    dpo_seconds = None
    for objective in objectives:
        trl_name = next(name for name in times if name.startswith(f"{objective}: TRL"))
        trl, plugin = mean(times[trl_name]), mean(times[f"{objective}: PreferenceTrainer"])
        rows.append(_row(trl_name, times[trl_name], pairs_per_step, tokens_per_step, raw=raw))
        row = _row(
            f"{objective}: PreferenceTrainer",
            times[f"{objective}: PreferenceTrainer"],
            pairs_per_step,
            tokens_per_step,
            raw=raw,
        )
        row["speedup_vs_trl"] = trl / plugin
        if objective == "dpo":
            dpo_seconds = plugin
        elif dpo_seconds is not None:
            row["step_time_vs_plugin_dpo"] = plugin / dpo_seconds
        rows.append(row)
    return rows


def _row(name, seconds: list[float], pairs_per_step: int, tokens_per_step: float, raw: float | None = None):
    step = mean(seconds)
    row = {
        "contender": name,
        "seconds_per_step": step,
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "pairs_per_second": pairs_per_step / step,
        "tokens_per_second": tokens_per_step / step,
    }
    if raw is not None:
        row["fraction_of_raw_bound"] = raw / step
    return row


def speed_table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| contender | s/step (min–max) | pairs/s | tokens/s | × TRL | of raw bound | × plugin dpo step "
        "| model TFLOP/s | of matmul rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        speedup = f"{row['speedup_vs_trl']:.2f}" if "speedup_vs_trl" in row else ""
        raw = f"{100 * row['fraction_of_raw_bound']:.0f}%" if "fraction_of_raw_bound" in row else ""
        versus_dpo = f"{row['step_time_vs_plugin_dpo']:.2f}" if "step_time_vs_plugin_dpo" in row else ""
        seconds = f"{row['seconds_per_step']:.2f} ({row['seconds_min']:.2f}–{row['seconds_max']:.2f})"
        flops = f"{row['model_flops_per_second'] / 1e12:.3f}" if "model_flops_per_second" in row else ""
        fraction = f"{100 * row['fraction_of_matmul_rate']:.0f}%" if "fraction_of_matmul_rate" in row else ""
        lines.append(
            f"| {row['contender']} | {seconds} | {row['pairs_per_second']:.2f} | {row['tokens_per_second']:.0f} "
            f"| {speedup} | {raw} | {versus_dpo} | {flops} | {fraction} |"
        )
    return "\n".join(lines)
