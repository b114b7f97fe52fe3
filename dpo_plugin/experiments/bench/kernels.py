"""`dpo-plugin bench kernels --config recipe.yaml`: the objective head alone against TRL's chunked kernels
(`trl.kernels`, which TRL's `DPOTrainer` patches into every model), the same work on the same tensors.

For N completion positions through the recipe model's LM head shape (V × d, its logit transform; random weights:
the time does not depend on their values), each contender runs a forward and a backward (the gradient into the
hidden states, and into the head's weight when the recipe trains it, i.e. without LoRA), with hidden states and
weights in the recipe's precision (bfloat16 with `bf16`, else float32):

- log-probs: `chunked_head` (log π(y_t) with the entropy, mean logit and argmax flag TRL logs) against
  `ChunkedLogProbFunction` asked for the same statistics, at TRL's vocabulary tile (`_CHUNKED_LOGPROB_CHUNK_SIZE`);
- TDPO: `chunked_head` with the reference's hidden states and head, log-probs and KL(π_ref ‖ π_θ) in one pass,
  against TRL's log-prob kernel plus `ChunkedDivergenceFunction` (forward KL, the reference as teacher).

Contenders take turns, round after round; a turn is one forward and backward after a warm-up one; reported is the
median, with the largest difference between the contenders' log-probs (and KL) as the check that they did the same
work. On a GPU the peak CUDA memory of a turn is reported too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import torch
from transformers import AutoConfig

from ...data.model_folders import model_folder
from ...objectives.chunked_head import Head, LogitTransform, auto_block_size, chunked_head
from ...training.recipe import parse_recipe
from ...utils.atomic import write_json
from ...utils.devices import device_name
from ...utils.run_folder import run_file
from ...utils.validation import check, each, integer_at_least
from .measuring import MB, synchronized_now


@dataclass
class KernelsBenchArguments:
    """What `dpo-plugin bench kernels` measures, on top of a training recipe (its model's head shape, precision,
    LoRA or not, `logits_block_size`)."""

    bench_positions: list[int] = field(
        default_factory=lambda: [512, 2048],
        metadata={"help": "Completion positions of one step (the quickstart's 8 pairs have about 500)."},
    )
    bench_rounds: int = field(default=5, metadata={"help": "Turns of each contender; the median is reported."})
    bench_output: str = field(default="outputs/bench_kernels.json", metadata={"help": "Where the JSON is written."})

    def __post_init__(self):
        check(self, {"bench_rounds": integer_at_least(1), "bench_positions": each(integer_at_least(1))})


@dataclass
class Shapes:
    """The head every contender projects through, and how a step runs it."""

    vocab: int
    width: int
    transform: LogitTransform
    trains_head: bool
    device: torch.device
    dtype: torch.dtype
    block_size: int


def kernels(argv: list[str]) -> dict:
    """Time the contenders at each number of positions; print a table and write JSON (`bench_output`, held by this
    benchmark alone while it runs)."""
    _, training_args, model_args, _, bench_args = parse_recipe(
        argv, extra=(KernelsBenchArguments,), prog="dpo-plugin bench kernels"
    )
    config = AutoConfig.from_pretrained(model_folder(model_args.model_name_or_path))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    use_cuda = torch.cuda.is_available() and not training_args.use_cpu
    shapes = Shapes(
        vocab=text.vocab_size,
        width=text.hidden_size,
        transform=LogitTransform.of(config),
        trains_head=not model_args.use_peft,
        device=torch.device("cuda" if use_cuda else "cpu"),
        dtype=torch.bfloat16 if training_args.bf16 else torch.float32,
        block_size=training_args.logits_block_size or auto_block_size(text.vocab_size),
    )
    with run_file(bench_args.bench_output, "bench_output"):
        rows = [row for positions in bench_args.bench_positions for row in _time(shapes, positions, bench_args)]
        results = {"argv": argv, "device": device_name(), "shapes": _described(shapes), "rows": rows}
        print(kernels_table(rows))
        write_json(Path(bench_args.bench_output), results)
        print(f"Wrote {bench_args.bench_output}")
    return results


def _described(shapes: Shapes) -> dict:
    return {
        "vocab": shapes.vocab,
        "width": shapes.width,
        "scale": shapes.transform.scale,
        "softcap": shapes.transform.softcap,
        "trains_head": shapes.trains_head,
        "dtype": str(shapes.dtype).removeprefix("torch."),
        "plugin_block_size": shapes.block_size,
        "trl_vocab_tile": _trl_tile(),
    }


def _trl_tile() -> int:
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    return _CHUNKED_LOGPROB_CHUNK_SIZE


def _time(shapes: Shapes, positions: int, bench_args: KernelsBenchArguments) -> list[dict]:
    """Each contender's median seconds for a forward and backward over `positions` positions, in turns."""
    inputs = _inputs(shapes, positions)
    contenders = _contenders(shapes, inputs)
    outputs = {name: run() for name, run in contenders.items()}  # the warm-up turn, kept for the check
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    peak: dict[str, float] = {}
    for _ in range(bench_args.bench_rounds):
        for name, run in contenders.items():
            if shapes.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            started = synchronized_now()
            run()
            seconds[name].append(synchronized_now() - started)
            if shapes.device.type == "cuda":
                peak[name] = torch.cuda.max_memory_allocated() / MB
    rows = []
    for name in contenders:
        task, contender = name.split(": ", 1)
        theirs = next(other for other in contenders if other.startswith(task) and other != name)
        difference = max(
            (mine - other).abs().max().item() for mine, other in zip(outputs[name], outputs[theirs], strict=True)
        )
        row = {"task": task, "contender": contender, "positions": positions, "seconds": median(seconds[name])}
        row |= {"turns": seconds[name], "max_abs_difference": difference}
        if name in peak:
            row["peak_cuda_mb"] = peak[name]
        rows.append(row)
    for row in rows:
        trl = next(r for r in rows if r["task"] == row["task"] and r["contender"].startswith("TRL"))
        row["x_trl"] = trl["seconds"] / row["seconds"]
    return rows


def _inputs(shapes: Shapes, positions: int) -> dict:
    generator = torch.Generator().manual_seed(positions)

    def normal(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*size, generator=generator) * scale).to(shapes.device, shapes.dtype)

    return {
        "hidden": normal(positions, shapes.width).requires_grad_(),
        "weight": normal(shapes.vocab, shapes.width, scale=shapes.width**-0.5).requires_grad_(shapes.trains_head),
        "ref_hidden": normal(positions, shapes.width),
        "ref_weight": normal(shapes.vocab, shapes.width, scale=shapes.width**-0.5),
        "labels": torch.randint(0, shapes.vocab, (positions,), generator=generator).to(shapes.device),
        "upstream": normal(positions, scale=0.1).float(),  # a gradient that weighs positions apart
    }


def _contenders(shapes: Shapes, inputs: dict) -> dict[str, Callable[[], tuple[torch.Tensor, ...]]]:
    """name ("task: contender") -> a turn: forward and backward, returning the forward's values (detached)."""
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    hidden, weight, labels = inputs["hidden"], inputs["weight"], inputs["labels"]
    ref_hidden, ref_weight, upstream = inputs["ref_hidden"], inputs["ref_weight"], inputs["upstream"]
    scale, softcap = shapes.transform.scale, shapes.transform.softcap
    trainable = [hidden, weight] if shapes.trains_head else [hidden]
    head, ref_head = Head(weight, None, shapes.transform), Head(ref_weight, None, shapes.transform)

    def trl_logps():
        statistics = ("entropy", "mean_logits", "is_top1")
        return ChunkedLogProbFunction.apply(hidden, weight, None, labels, 1.0, _trl_tile(), softcap, scale, statistics)

    def trl_kl():
        divergence = ChunkedDivergenceFunction.apply(
            hidden, weight, None, ref_hidden, ref_weight, None, 0.0, 1.0, scale, softcap, scale, softcap
        )
        return divergence[0]

    def turn(forward: Callable[[], tuple[torch.Tensor, ...]]) -> Callable[[], tuple[torch.Tensor, ...]]:
        def run():
            values = forward()
            torch.autograd.grad(sum((value * upstream).sum() for value in values), trainable)
            return tuple(value.detach().float() for value in values)

        return run

    return {
        "log-probs: PreferenceTrainer chunked head": turn(
            lambda: (chunked_head(hidden, labels, head, shapes.block_size).logps,)
        ),
        "log-probs: TRL ChunkedLogProbFunction": turn(lambda: (trl_logps()[0],)),
        "TDPO log-probs + KL: PreferenceTrainer chunked head (one pass)": turn(
            lambda: tuple(
                getattr(chunked_head(hidden, labels, head, shapes.block_size, ref_hidden, ref_head), name)
                for name in ("logps", "kl")
            )
        ),
        "TDPO log-probs + KL: TRL log-prob + divergence kernels": turn(lambda: (trl_logps()[0], trl_kl())),
    }


def kernels_table(rows: list[dict]) -> str:
    memory = any("peak_cuda_mb" in row for row in rows)
    header = "| task | contender | positions | s (median) | × TRL | max abs difference |" + (
        " peak CUDA MB |" if memory else ""
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for row in rows:
        line = (
            f"| {row['task']} | {row['contender']} | {row['positions']} | {row['seconds']:.4f} | "
            f"{row['x_trl']:.2f} | {row['max_abs_difference']:.1e} |"
        )
        lines.append(line + (f" {row['peak_cuda_mb']:,.0f} |" if memory else ""))
    return "\n".join(lines)
