"""`dpo-plugin bench sampling --config recipes/online_dpo.yaml`: completion tokens per second of the on-policy loop's
sampler against the bare `CompletionSampler` at a small batch and plain `model.generate`, on the same
prompts and settings, in alternating turns of one run, with the machine's bound for the loop's batch.

Each contender writes `samples_per_prompt` completions of each of the recipe's first `bench_prompts` prompts:

- `generate`: transformers' `model.generate` on batches of `bench_baseline_batch` rows, float32, left-padded;
- `CompletionSampler`: the sampler alone, on the same batches (how `dpo-plugin eval` sampled before it took the
  rollout);
- `online rounds`: the one rollout (`evaluation/rollout.py`, through the grouped environment) that the loop, its
  held-out sampling and `dpo-plugin eval` run: the prompts sorted by length, `sampling_batch_size` prompts ×
  `samples_per_prompt` rows a call, under bf16 autocast where the recipe trains in bf16.

A completion's tokens count through its first EOS. The bound of one decoding step of R rows is the longer of
reading every weight once (its bytes at the measured copy bandwidth) and 2·P·R FLOPs at the measured matmul rate;
R over that time is the tokens/s no sampler of that batch beats.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import torch
from tqdm.auto import tqdm

from ...evaluation.policies import CompletionSampler
from ...evaluation.rollout import prompt_texts, sample_groups
from ...online.recipe import parse_online_recipe, recipe_prompts
from ...training.recipe import load_policy
from ...utils.atomic import write_json
from ...utils.devices import device_name
from ...utils.quiet import library_progress_bars_off
from ...utils.run_folder import run_file
from ...utils.validation import check, integer_at_least
from .flops import dense_matmul_rate


@dataclass
class SamplingBenchArguments:
    """What `dpo-plugin bench sampling` measures, on top of an online recipe."""

    bench_prompts: int = field(default=32, metadata={"help": "Prompts each contender completes per turn."})
    bench_baseline_batch: int = field(
        default=16,
        metadata={
            "help": "Rows per call of `generate` and `CompletionSampler` (dpo-plugin eval's before the rollout)."
        },
    )
    bench_rounds: int = field(default=2, metadata={"help": "Rounds in which the contenders take turns."})
    bench_output: str = field(default="outputs/bench_sampling.json", metadata={"help": "Where the JSON is written."})

    def __post_init__(self):
        rule = integer_at_least(1)
        check(self, {"bench_prompts": rule, "bench_baseline_batch": rule, "bench_rounds": rule})


def sampling(argv: list[str]) -> dict:
    """Time the contenders in alternating turns; print a table and write JSON (`bench_output`, held by this
    benchmark alone while it runs)."""
    recipe = parse_online_recipe(argv, "dpo-plugin bench sampling", extra=(SamplingBenchArguments,))
    with run_file(recipe[-1].bench_output, "bench_output"):
        return _time_samplers(argv, *recipe)


def _time_samplers(argv, script_args, config, model_args, bench_args: SamplingBenchArguments) -> dict:
    library_progress_bars_off()
    model, tokenizer = load_policy(model_args, config.device)
    model = model.to(config.device).eval()
    rows = recipe_prompts(script_args, script_args.dataset_train_split, bench_args.bench_prompts)
    prompts = prompt_texts(rows, tokenizer)
    prompt_rows = [{"prompt": prompt} for prompt in prompts]
    rows = [prompt for prompt in prompts for _ in range(config.samples_per_prompt)]
    batch = bench_args.bench_baseline_batch
    device_type = torch.device(config.device).type
    autocast = lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=bool(config.bf16))  # noqa: E731
    sampler = CompletionSampler(model, tokenizer, config.generation)
    online = CompletionSampler(model, tokenizer, config.generation, autocast)
    runs = {
        "generate": lambda: _in_batches(lambda chunk: _generate(model, tokenizer, chunk, sampler), rows, batch),
        "CompletionSampler": lambda: _in_batches(lambda chunk: _count(sampler.sample(chunk)), rows, batch),
        "online rounds": lambda: _online_rounds(online, prompt_rows, config),
    }
    turns: dict[str, list[list[float]]] = {name: [] for name in runs}
    with torch.no_grad():
        for index in range(bench_args.bench_rounds):
            for name, run in tqdm(runs.items(), desc=f"round {index + 1}/{bench_args.bench_rounds}", unit="contender"):
                torch.manual_seed(index)
                started = time.perf_counter()
                tokens = run()
                turns[name].append([tokens, time.perf_counter() - started])
    table = [
        {"contender": name, "tokens_per_second": median(t / s for t, s in measured), "turns": measured}
        for name, measured in turns.items()
    ]
    today = table[1]["tokens_per_second"]
    for row in table:
        row["vs_completion_sampler"] = row["tokens_per_second"] / today
    bound = decoding_bound(online.model, config.sampling_batch_size * config.samples_per_prompt, bool(config.bf16))
    results = {"argv": argv, "device": device_name(), "rows": table, "bound": bound}
    print(sampling_table(table, bound))
    write_json(Path(bench_args.bench_output), results)
    print(f"Wrote {bench_args.bench_output}")
    return results


def _in_batches(sample, rows: list[str], batch: int) -> int:
    return sum(sample(rows[start : start + batch]) for start in range(0, len(rows), batch))


def _count(samples) -> int:
    return sum(len(ids) for ids in samples.completion_ids)


def _generate(model, tokenizer, prompts: list[str], sampler: CompletionSampler) -> int:
    """transformers' own: the tokenizer's left padding, `generate`, tokens counted through the first EOS."""
    tokenizer.padding_side = "left"
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    output = model.generate(
        **inputs, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sampler.generation_kwargs
    )
    eos = tokenizer.eos_token_id
    completions = output[:, inputs["input_ids"].size(1) :].tolist()
    return sum(row.index(eos) + 1 if eos in row else len(row) for row in completions)


def _online_rounds(sampler: CompletionSampler, rows: list[dict], config) -> int:
    zero = lambda prompts, completions: [0.0] * len(completions)  # noqa: E731  (ranking is not what is timed)
    samples = sample_groups(
        sampler, rows, {"zero": zero}, config.samples_per_prompt, config.sampling_batch_size, 0, progress=False
    )
    return sum(len(ids) for group in samples.groups for ids in group.completion_ids)


def decoding_bound(model, rows: int, bf16: bool) -> dict:
    """The fastest one decoding step of `rows` rows can run here: every weight read once at the measured copy
    bandwidth, or 2·P·rows FLOPs at the measured matmul rate (bf16 where `bf16`), whichever is slower."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    matmul_params = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    device = next(model.parameters()).device
    bandwidth = copy_bandwidth(device)
    rate = dense_matmul_rate(device, torch.bfloat16 if bf16 else torch.float32)
    step = max(weights / bandwidth, 2 * matmul_params * rows / rate)
    return {
        "rows": rows,
        "weight_bytes": weights,
        "copy_bytes_per_second": bandwidth,
        "matmul_flops_per_second": rate,
        "bound_by": "memory" if weights / bandwidth >= 2 * matmul_params * rows / rate else "matmul",
        "tokens_per_second": rows / step,
    }


def copy_bandwidth(device: torch.device, megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second read and written by copying a `megabytes` float32 tensor (the best of `repeats`)."""
    source = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * 4 / best


def sampling_table(rows: list[dict], bound: dict) -> str:
    lines = ["| contender | completion tokens/s | × CompletionSampler |", "|---|---|---|"]
    lines += [
        f"| {row['contender']} | {row['tokens_per_second']:.1f} | {row['vs_completion_sampler']:.2f} |" for row in rows
    ]
    lines.append(
        f"Bound at the loop's {bound['rows']} rows a call: {bound['tokens_per_second']:.0f} tokens/s "
        f"({bound['bound_by']}: {bound['weight_bytes'] / 1e6:.0f} MB of weights at "
        f"{bound['copy_bytes_per_second'] / 1e9:.1f} GB/s, {bound['matmul_flops_per_second'] / 1e12:.2f} TFLOP/s)."
    )
    return "\n".join(lines)
