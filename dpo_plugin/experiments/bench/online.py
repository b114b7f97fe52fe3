"""`dpo-plugin bench online --config recipes/online_sentiment.yaml`: the plugin's on-policy rounds against TRL's
`OnlineDPOTrainer` (`trl.experimental.online_dpo`) on the same model, prompts, reward function, optimizer settings
and number of optimizer steps, one after another in one process.

- **TRL**: each optimizer step samples 2 completions of `per_device_train_batch_size` prompts, scores them, trains
  one step on the pair (chosen = the first if its reward is ≥ the second's); `rounds · prompts_per_round /
  per_device_train_batch_size` steps, so as many prompts as the plugin's rounds.
- **The plugin** at each of `bench_samples` samples per prompt (2: TRL's; 4: the plugin's default, best against
  worst): `rounds` rounds of `prompts_per_round` prompts, one pass over each round's pairs (`epochs_per_round` 1),
  so one step per `per_device_train_batch_size` pairs (ties dropped: at most TRL's steps).

Measured for each: wall time by phase (sampling, scoring, the rest: training), peak resident memory (CUDA where
there is a GPU) while training, above what the loaded models hold; and, on the first `bench_eval_prompts` held-out
prompts (one completion each, sampling seed 0 for every policy), the mean reward and KL(π ‖ π_start) of the trained
policy, against the policy before training. Deliberate differences: TRL draws its prompts in its data loader's
order, the plugin one shuffled pass; TRL schedules the learning rate over the whole run, the plugin per round.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from dpo_plugin_envs.reward_calls import RewardCall

from ...evaluation.evaluator import HeldoutEvaluator
from ...online.recipe import build_online_trainer, parse_online_recipe, recipe_prompts
from ...online.rewards import resolve_rewards
from ...training.recipe import load_policy
from ...utils.atomic import write_json
from ...utils.devices import device_name
from ...utils.errors import ConfigError
from ...utils.quiet import library_progress_bars_off
from ...utils.run_folder import run_file
from ...utils.validation import check, each, integer_at_least
from .measuring import PeakRSS, release_freed_memory, settled_rss_bytes

MB = 1e6


@dataclass
class OnlineBenchArguments:
    """What `dpo-plugin bench online` measures, on top of an online recipe."""

    bench_samples: list[int] = field(
        default_factory=lambda: [2, 4], metadata={"help": "The plugin's samples per prompt, one contender each."}
    )
    bench_eval_prompts: int = field(default=64, metadata={"help": "Held-out prompts each trained policy completes."})
    bench_output: str = field(default="outputs/bench_online.json", metadata={"help": "Where the JSON is written."})

    def __post_init__(self):
        check(self, {"bench_samples": each(integer_at_least(2)), "bench_eval_prompts": integer_at_least(1)})


def online(argv: list[str]) -> dict:
    """Train each contender, measure it, print the table and write the JSON (`bench_output`, held by this benchmark
    alone while it runs)."""
    recipe = parse_online_recipe(
        [*argv, "--epochs_per_round", "1", "--eval_prompts", "0"], "dpo-plugin bench online", (OnlineBenchArguments,)
    )
    with run_file(recipe[-1].bench_output, "bench_output"):
        return _measure_contenders(argv, *recipe)


def _measure_contenders(argv, script_args, config, model_args, bench_args: OnlineBenchArguments) -> dict:
    if config.prompts_per_round % config.per_device_train_batch_size:
        raise ConfigError("prompts_per_round must be a multiple of per_device_train_batch_size (TRL's prompts a step).")
    library_progress_bars_off()
    eval_prompts = list(
        recipe_prompts(script_args, script_args.dataset_test_split, bench_args.bench_eval_prompts)["prompt"]
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-online-") as scratch:
        policy, tokenizer = load_policy(model_args, config.device)
        rewards = resolve_rewards(script_args.reward_funcs, tokenizer, script_args.reward_batch_size, config.max_length)
        evaluate = functools.partial(
            _evaluate, tokenizer=tokenizer, prompts=eval_prompts, rewards=rewards, generation=config.generation
        )
        start = evaluate(policy, contextlib.nullcontext)
        del policy
        rows.append(_trl(script_args, config, model_args, rewards, evaluate, Path(scratch) / "trl"))
        for samples in bench_args.bench_samples:
            overrides = ["--samples_per_prompt", str(samples), "--output_dir", str(Path(scratch) / f"plugin-{samples}")]
            rows.append(_plugin(argv, overrides, evaluate))
    for row in rows:
        row["gain"] = row["reward"] - start["reward"]
    result = {
        "command": "dpo-plugin bench online " + " ".join(argv),
        "device": device_name(),
        "start": start,
        "rows": rows,
    }
    write_json(Path(bench_args.bench_output), result)
    print(online_table(rows, start))
    print(f"Wrote {bench_args.bench_output}")
    return result


def _trl(script_args, config, model_args, rewards: dict, evaluate, output_dir: Path) -> dict:
    from trl import get_peft_config
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    policy, tokenizer = load_policy(model_args, config.device)
    steps = config.rounds * config.prompts_per_round // config.per_device_train_batch_size
    shared = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "per_device_train_batch_size")
    shared += ("max_new_tokens", "temperature", "top_p", "seed", "use_cpu", "bf16", "gradient_checkpointing")
    trl_config = OnlineDPOConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        beta=[config.beta],
        loss_type="ipo" if config.loss_type == ["ipo"] else "sigmoid",
        max_length=config.max_length,
        report_to="none",
        logging_steps=max(1, steps // 4),
        save_strategy="no",
        disable_tqdm=True,
        **{key: getattr(config, key) for key in shared},
    )
    trainer = OnlineDPOTrainer(
        model=policy,
        reward_funcs=[RewardCall(name, fn) for name, fn in rewards.items()],  # TRL calls them with keywords
        args=trl_config,
        train_dataset=recipe_prompts(script_args, script_args.dataset_train_split, script_args.max_prompts),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    phases = {"sampling": _timed(trainer, "_generate"), "scoring": _timed(trainer, "_calculate_rewards_from_functions")}
    memory = _measured(trainer.train, trainer.model)
    row = {"contender": "TRL OnlineDPOTrainer", "samples_per_prompt": 2, "steps": trainer.state.global_step}
    row |= {"completions": 2 * steps * config.per_device_train_batch_size}
    row |= {"seconds": _phases(memory["seconds"], {name: timer.seconds for name, timer in phases.items()})}
    model = trainer.accelerator.unwrap_model(trainer.model)
    evaluation = evaluate(model, model.disable_adapter)
    return row | {key: value for key, value in memory.items() if key != "seconds"} | evaluation


def _plugin(argv, overrides, evaluate) -> dict:
    script_args, plugin_config, model_args, _ = parse_online_recipe(
        [*argv, "--epochs_per_round", "1", "--eval_prompts", "0", *overrides],
        "dpo-plugin bench online",
        (OnlineBenchArguments,),
    )
    trainer = build_online_trainer(script_args, plugin_config, model_args)
    memory = _measured(trainer.train, trainer.model)
    rounds = trainer.rounds
    phases = {name: sum(r[f"time/{name}"] for r in rounds) for name in ("sampling", "ranking")}
    row = {"contender": "dpo_plugin OnlinePreferenceTrainer", "samples_per_prompt": plugin_config.samples_per_prompt}
    completions = plugin_config.rounds * plugin_config.prompts_per_round * plugin_config.samples_per_prompt
    row |= {"steps": sum(r["steps"] for r in rounds), "completions": completions}
    row |= {"seconds": _phases(memory["seconds"], {"sampling": phases["sampling"], "scoring": phases["ranking"]})}
    row["pairs"] = sum(r["pairs"] for r in rounds)
    evaluation = evaluate(trainer.model, trainer.model.disable_adapter)
    return row | {key: value for key, value in memory.items() if key != "seconds"} | evaluation


class _Timer:
    def __init__(self):
        self.seconds = 0.0


def _timed(trainer, method: str) -> _Timer:
    """Wrap `trainer.<method>` so its wall time adds up in the returned timer."""
    timer, original = _Timer(), getattr(trainer, method)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timer.seconds += time.perf_counter() - started

    setattr(trainer, method, timed)
    return timer


def _measured(train, model) -> dict:
    """Wall time and peak memory of `train()`, the latter above the RSS with `model`'s weights resident."""
    release_freed_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    setup = settled_rss_bytes(model)
    started = time.perf_counter()
    with PeakRSS() as peak:
        train()
    seconds = time.perf_counter() - started
    cuda = torch.cuda.max_memory_allocated() / MB if torch.cuda.is_available() else None
    return {"seconds": seconds, "peak_rss_growth_mb": (peak.bytes - setup) / MB, "peak_cuda_mb": cuda}


def _phases(total: float, measured: dict[str, float]) -> dict[str, float]:
    return measured | {"training": total - sum(measured.values()), "total": total}


def _evaluate(policy, start_context, *, tokenizer, prompts, rewards, generation) -> dict:
    """Mean reward and KL(π ‖ π_start) of one completion per held-out prompt (seed 0), with standard errors."""
    evaluator = HeldoutEvaluator((policy, contextlib.nullcontext), (policy, start_context), tokenizer, 64)
    report = evaluator.samples(prompts, rewards, generation, seed=0)
    (name,) = report.rewards if len(report.rewards) == 1 else ("total",)
    reward = sum(report.rewards.values()) if name == "total" else report.rewards[name]
    return {
        "reward": reward,
        "reward_se": report.standard_errors.get(name, 0.0),
        "kl": report.kl,
        "kl_se": report.standard_errors["kl"],
    }


def online_table(rows: list[dict], start: dict) -> str:
    lines = [
        f"Held-out reward before training: {start['reward']:.3f} ± {start['reward_se']:.3f} (SE).",
        "",
        "| contender | samples/prompt | completions | steps | sampling s | scoring s | training s | total s | "
        "peak RSS growth MB | held-out reward (gain) | KL |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s = row["seconds"]
        lines.append(
            f"| {row['contender']} | {row['samples_per_prompt']} | {row['completions']} | {row['steps']} | "
            f"{s['sampling']:.0f} | {s['scoring']:.0f} | {s['training']:.0f} | {s['total']:.0f} | "
            f"{row['peak_rss_growth_mb']:.0f} | {row['reward']:.3f} ± {row['reward_se']:.3f} ({row['gain']:+.3f}) | "
            f"{row['kl']:.2f} ± {row['kl_se']:.2f} |"
        )
    return "\n".join(lines)
