"""`dpo-plugin bench phases --config recipe.yaml`: where a `PreferenceTrainer` step's time goes, phase by phase.

The recipe's trainer trains `bench_warmup` untimed steps, then `bench_steps` steps with a clock around each phase
of the real code (the functions are wrapped for the run and restored after it; nothing else changes):

    collation            the data collator building each batch
    policy forward       the policy's forward to the hidden states (or logits) at completion positions
    reference forward    the reference's forward, without gradient
    head forward         the chunked head over completion positions (log-probs, statistics, TDPO's KL)
    backward: head       the chunked head's backward (it recomputes each block's logits)
    backward: model      the rest of backward (the policy's layers)
    guards               the non-finite check of the gradients and the weight-growth check of each step
    optimizer            the optimizer's step
    other                the step's wall time less the phases above: loss, metrics, logging, transformers' loop

then one more step under the torch profiler, whose operators with the most self CPU time are listed (matmuls,
casts, softmax, ...). Phase times are wall times, synchronized on a GPU; each is the mean per optimizer step.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.optim.optimizer as optimizer_hooks
from transformers import PrinterCallback, TrainerCallback

from ...objectives import chunked_head as chunked_head_module
from ...objectives import reader as reader_module
from ...objectives.losses import OBJECTIVES
from ...training import guards as guards_module
from ...training import trainer as trainer_module
from ...training.recipe import build_trainer, parse_recipe
from ...utils.atomic import write_json
from ...utils.devices import device_name
from ...utils.quiet import library_progress_bars_off
from ...utils.run_folder import run_file
from ...utils.validation import check, integer_at_least, some_of
from .measuring import synchronized_now

PHASES = (
    "collation",
    "policy forward",
    "reference forward",
    "head forward",
    "backward: head",
    "backward: model",
    "guards",
    "optimizer",
    "other",
)
FORWARDS = (
    "completion_hidden",
    "completion_hidden_shared_prompt",
    "completion_logits",
    "completion_logits_shared_prompt",
)
TOP_OPERATORS = 15
INHERITED = object()  # an attribute its owner's class defines, not the owner itself


@dataclass
class PhasesBenchArguments:
    """What `dpo-plugin bench phases` measures, on top of a training recipe."""

    bench_objectives: list[str] = field(
        default_factory=lambda: ["dpo", "tdpo2"], metadata={"help": f"Objectives to profile: {list(OBJECTIVES)}."}
    )
    bench_steps: int = field(default=4, metadata={"help": "Timed optimizer steps per objective."})
    bench_warmup: int = field(default=1, metadata={"help": "Untimed steps first."})
    bench_output: str = field(default="outputs/bench_phases.json", metadata={"help": "Where the JSON is written."})

    def __post_init__(self):
        check(
            self,
            {
                "bench_objectives": some_of(OBJECTIVES),
                "bench_steps": integer_at_least(1),
                "bench_warmup": integer_at_least(0),
            },
        )


def phases(argv: list[str]) -> dict:
    """Profile each objective's step; print a table per objective and write JSON (`bench_output`, held by this
    benchmark alone while it runs)."""
    *_, bench_args = parse_recipe(argv, extra=(PhasesBenchArguments,), prog="dpo-plugin bench phases")
    with run_file(bench_args.bench_output, "bench_output"):
        library_progress_bars_off()
        results = {"argv": argv, "device": device_name(), "objectives": {}}
        for objective in bench_args.bench_objectives:
            print(f"Profiling {objective}: {bench_args.bench_warmup} untimed steps, {bench_args.bench_steps} timed ...")
            results["objectives"][objective] = _profile(argv, bench_args, objective)
            print(phases_table(objective, results["objectives"][objective]))
        write_json(Path(bench_args.bench_output), results)
        print(f"Wrote {bench_args.bench_output}")
    return results


def _profile(argv: list[str], bench_args: PhasesBenchArguments, objective: str) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        overrides = ["--output_dir", output_dir, "--save_strategy", "no", "--report_to", "none", "--loss_type"]
        overrides += [objective, "--heldout_eval_pairs", "0", "--logging_steps", "1", "--disable_tqdm", "true"]
        data_args, args, model_args, _, _ = parse_recipe(
            [*argv, *overrides], extra=(PhasesBenchArguments,), prog="dpo-plugin bench phases"
        )
        trainer, _, _ = build_trainer(data_args, args, model_args)
        trainer.remove_callback(PrinterCallback)
        first, last = bench_args.bench_warmup + 1, bench_args.bench_warmup + bench_args.bench_steps
        steps = StepClock(timed=range(first, last + 1), profiled=last + 1)
        trainer.add_callback(steps)  # after the trainer's own callbacks: their step-end work is inside the step
        trainer.args.max_steps = last + 1
        clock = PhaseClock()
        with clock.around_phases(trainer, steps):
            trainer.train()
    seconds = {phase: clock.totals[phase] / bench_args.bench_steps for phase in PHASES if phase != "other"}
    step = sum(steps.times) / len(steps.times)
    seconds["other"] = step - sum(seconds.values())
    return {
        "seconds_per_step": step,
        "phases": {phase: {"seconds": value, "share": value / step} for phase, value in seconds.items()},
        "top_operators": steps.operators,
    }


class StepClock(TrainerCallback):
    """Wall time of the timed optimizer steps (`timed`, numbered from 1), each from the previous step's end to its own
    (the batch's loading and collation included); the phase clock is on only during them. Step `profiled` runs
    under the torch profiler, its top operators kept in `operators`."""

    def __init__(self, timed: range, profiled: int):
        self.timed, self.profiled = timed, profiled
        self.times: list[float] = []
        self.operators: list[dict] = []
        self.clock_on = False
        self._started = 0.0
        self._profiler = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._next(state.global_step + 1)

    def on_step_end(self, args, state, control, **kwargs):
        if self.clock_on:
            self.times.append(synchronized_now() - self._started)
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self.operators = _top_operators(self._profiler)
            self._profiler = None
        self._next(state.global_step + 1)

    def _next(self, step: int) -> None:
        """Set up for optimizer step `step`, which starts now."""
        self.clock_on = step in self.timed
        if step == self.profiled:
            self._profiler = torch.profiler.profile(activities=_activities())
            self._profiler.__enter__()
        self._started = synchronized_now()


class PhaseClock:
    """Seconds spent in each phase while the step clock is on, from wrappers around the functions that run them."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self._optimizer_started = 0.0

    @contextlib.contextmanager
    def around_phases(self, trainer, steps: StepClock) -> Iterator[None]:
        """The phases' functions wrapped for the block (collation is wrapped on the trainer's collator)."""
        forward = {name: self._timed(getattr(reader_module, name), steps, _forward_phase) for name in FORWARDS}
        head = chunked_head_module._ChunkedHead
        wrapped = {
            (reader_module, "chunked_head"): self._timed(reader_module.chunked_head, steps, lambda: "head forward"),
            (head, "backward"): staticmethod(self._timed(head.backward, steps, lambda: "backward: head")),
            (trainer.accelerator, "backward"): self._backward(trainer.accelerator.backward, steps),
            (trainer_module, "gradients_are_finite"): self._timed(
                trainer_module.gradients_are_finite, steps, lambda: "guards"
            ),
            (guards_module.DivergenceGuard, "on_step_end"): self._timed(
                guards_module.DivergenceGuard.on_step_end, steps, lambda: "guards"
            ),
            (trainer, "data_collator"): self._timed(trainer.data_collator, steps, lambda: "collation"),
        }
        wrapped |= {(reader_module, name): function for name, function in forward.items()}
        originals = {key: vars(key[0]).get(key[1], INHERITED) for key in wrapped}
        handles = (
            optimizer_hooks.register_optimizer_step_pre_hook(lambda *_: self._optimizer_starts(steps)),
            optimizer_hooks.register_optimizer_step_post_hook(lambda *_: self._optimizer_ends(steps)),
        )
        for (owner, name), function in wrapped.items():
            setattr(owner, name, function)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for (owner, name), function in originals.items():
                if function is INHERITED:
                    delattr(owner, name)  # the wrapper shadowed what its class defines
                else:
                    setattr(owner, name, function)

    def _timed(self, function: Callable, steps: StepClock, phase: Callable[[], str]) -> Callable:
        def timed(*args, **kwargs):
            if not steps.clock_on:
                return function(*args, **kwargs)
            label = phase()
            started = synchronized_now()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[label] += synchronized_now() - started

        return timed

    def _backward(self, backward: Callable, steps: StepClock) -> Callable:
        """The whole backward, less the head's backward inside it: the model's part."""

        def timed(*args, **kwargs):
            head_before, started = self.totals["backward: head"], synchronized_now()
            try:
                return backward(*args, **kwargs)
            finally:
                if steps.clock_on:
                    head = self.totals["backward: head"] - head_before
                    self.totals["backward: model"] += synchronized_now() - started - head

        return timed

    def _optimizer_starts(self, steps: StepClock) -> None:
        if steps.clock_on:
            self._optimizer_started = synchronized_now()

    def _optimizer_ends(self, steps: StepClock) -> None:
        if steps.clock_on:
            self.totals["optimizer"] += synchronized_now() - self._optimizer_started


def _forward_phase() -> str:
    return "policy forward" if torch.is_grad_enabled() else "reference forward"


def _activities() -> list:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def _top_operators(profiler) -> list[dict]:
    """The operators with the most self time (CPU; on a GPU, device time too), with their call counts."""
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    return [
        {
            "operator": event.key,
            "calls": event.count,
            "self_cpu_seconds": event.self_cpu_time_total / 1e6,
            "self_device_seconds": getattr(event, "self_device_time_total", 0) / 1e6,
        }
        for event in events[:TOP_OPERATORS]
    ]


def phases_table(objective: str, result: dict) -> str:
    """One objective's phases as a Markdown table, then its top operators."""
    lines = [
        f"{objective}: {result['seconds_per_step']:.3f} s per optimizer step",
        "",
        "| phase | s/step | share |",
        "|---|---|---|",
    ]
    for phase, value in result["phases"].items():
        lines.append(f"| {phase} | {value['seconds']:.3f} | {100 * value['share']:.1f}% |")
    lines += ["", "| operator (one profiled step) | calls | self CPU s |", "|---|---|---|"]
    for operator in result["top_operators"]:
        lines.append(f"| {operator['operator']} | {operator['calls']} | {operator['self_cpu_seconds']:.3f} |")
    return "\n".join(lines)
