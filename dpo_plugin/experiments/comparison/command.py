"""`dpo-plugin compare --config recipes/compare_dpo_ppo.yaml`: the DPO paper's comparison, end to end.

1. `sentiment-generation` pairs from the reference (built once, cached); 2. the Bradley–Terry reward model;
3. DPO, IPO, TDPO2, the online arms and RM + PPO for each seed, then the β / KL-coefficient sweep; 4. the claims;
5. the report (`report.py`). Each step says what it is doing; every run keeps its adapters and its `result.json`
(with the settings it depends on) under `output_dir/runs/`, the reward model its `reward_model.json`. Run again, the
command reuses each finished run and the reward model whose settings match, and refuses one whose settings differ.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import sys
import textwrap
import time
from pathlib import Path

from ...objectives import logprobs, losses
from ...rlhf import ppo, ppo_math, reward_model
from ...training.interruption import Interrupted
from ...utils.atomic import write_json
from ...utils.config_files import parse_config
from ...utils.devices import device_name
from ...utils.errors import ConfigError
from ...utils.run_folder import run_folder
from .claims import dpo_versus_ipo, online_versus_offline, tdpo_versus_dpo
from .report import markdown, write_report
from .runs import CompareConfig, RunResult
from .setup import ComparisonSetup

RESULT_FILE = "result.json"

logger = logging.getLogger("dpo_plugin")


def compare(argv: list[str]) -> dict:
    """Run the comparison the recipe describes; write comparison.md, comparison.json and the plots. SIGTERM or
    SIGINT during a run stops the comparison (exit 128 + the signal) with every finished run kept."""
    _, config = parse_config((CompareConfig,), argv, "dpo-plugin compare")
    try:
        with run_folder(config.output_dir):  # this comparison's alone
            return _compare(config, argv)
    except Interrupted as stop:
        logger.warning("%s; the finished runs are kept, no report was written.", stop)
        sys.exit(128 + stop.signal_number)


def _compare(config: CompareConfig, argv: list[str]) -> dict:
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    setup = ComparisonSetup(config)
    evaluator = setup.evaluator
    reference_samples = evaluator.samples(setup.reference, config.eval_prompts)

    methods = [*config.objectives, *(f"online-{arm}" for arm in config.online), *["ppo"] * config.ppo]
    main_plan = [(method, seed) for seed in config.seeds for method in methods]
    plan = [(m, config.kl_coef if m == "ppo" else config.beta, s) for m, s in main_plan]
    plan += [("dpo", beta, config.seeds[0]) for beta in config.beta_sweep]
    plan += [("ppo", kl_coef, config.seeds[0]) for kl_coef in config.kl_coef_sweep]
    results: list[RunResult] = []
    for index, (method, strength, seed) in enumerate(plan, 1):
        knob = "KL coefficient" if method == "ppo" else "β"
        run_dir = output_dir / "runs" / f"{method.replace('/', '-')}-{strength:g}-seed{seed}"
        settings = run_settings(config, method)
        result = finished_run(run_dir, settings)
        verb = "reusing the finished run in" if result else "training into"
        logger.info(
            "[%d/%d] %s, %s = %g, seed %d: %s %s",
            index,
            len(plan),
            method,
            knob,
            strength,
            seed,
            verb,
            run_dir,
        )
        if result is None:
            result = setup.train(config, method, strength, seed, run_dir)
            write_json(run_dir / RESULT_FILE, result.to_dict() | {"settings": settings})  # kept if a later run fails
        results.append(result)
    runs, sweep = results[: len(main_plan)], results[len(main_plan) :]

    claims = {"tdpo_vs_dpo": tdpo_versus_dpo(runs)}
    if config.online:
        claims["online_vs_offline"] = online_versus_offline(runs)
    if config.claims:
        logger.info("Checking the DPO-vs-IPO claim on sentiment-pairs.")
        claims = {
            "dpo_vs_ipo": dpo_versus_ipo(config, setup.reference, setup.tokenizer, output_dir / "claims"),
            **claims,
        }
    rm = setup.reward_model
    report = {
        "setup": {
            "command": "dpo-plugin compare " + " ".join(argv),
            "device": device_name(),
            "total_seconds": round(time.perf_counter() - started, 1),
            "train_pairs": len(setup.train_pairs),
            "eval_pairs": len(evaluator.pairs),
            "eval_prompts": config.eval_prompts,
            "gold_classifier": setup.gold.classifier.summary()["description"],
            "data": setup.data,
            "config": vars(config),
        },
        "reward_model": {key: rm[key] for key in ("accuracy", "train_seconds", "path")},
        "reference": {"rewards": reference_samples.rewards, "examples": reference_samples.examples},
        "runs": [run.to_dict() for run in runs],
        "sweep": [run.to_dict() for run in sweep],
        "claims": claims,
        "complexity": implementation_complexity(),
    }
    paths = write_report(output_dir, report)
    print(markdown(report))
    print("Wrote " + ", ".join(str(path) for path in paths))
    return report


def run_settings(config: CompareConfig, method: str) -> dict:
    """What one run's result depends on: the data and evaluation keys, and the text of the recipes it trains with."""
    recipe = config.recipe_of(method)
    keys = ("model_name_or_path", "train_prompts", "test_prompts", "samples_per_prompt", "max_new_tokens")
    keys += ("eval_pairs", "eval_prompts", "probe_pairs", "probe_prompts", "probes", "batch_size")
    recipes = {"recipe": Path(recipe).read_text(), "reward_model_recipe": Path(config.reward_model_recipe).read_text()}
    return {key: getattr(config, key) for key in keys} | recipes


def finished_run(run_dir: Path, settings: dict) -> RunResult | None:
    """The run finished in `run_dir` with these settings; None when there is none; a `ConfigError` when its result
    was made with other settings (rerunning would silently replace it)."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    differing = sorted(key for key in settings if stored.get("settings", {}).get(key) != settings[key])
    if differing:
        raise ConfigError(
            f"{path} was made with other settings ({', '.join(differing)}): give a new output_dir, or delete "
            f"{run_dir} to train that run again."
        )
    return RunResult.from_dict({key: value for key, value in stored.items() if key != "settings"})


def code_lines(*objects) -> int:
    """Lines of code in the source of functions or modules, docstrings and comments excluded (as `ast.unparse`
    prints it, one statement per line)."""
    total = 0
    for obj in objects:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
        total += sum(1 for line in ast.unparse(tree).splitlines() if line.strip())
    return total


def implementation_complexity() -> list[dict]:
    """What each method needs beyond the shared parts (data, log-probs, trainer plumbing, evaluation)."""
    one_network = "policy + reference: 1 network with LoRA (the reference is the adapters off), 2 without"
    return [
        {
            "method": "DPO",
            "lines": code_lines(losses.dpo_loss),
            "counted": "losses.dpo_loss",
            "models": one_network,
            "generation": "0",
        },
        {
            "method": "IPO",
            "lines": code_lines(losses.ipo_loss),
            "counted": "losses.ipo_loss",
            "models": one_network,
            "generation": "0",
        },
        {
            "method": "TDPO2",
            "lines": code_lines(losses.tdpo_loss, logprobs.token_kl),
            "counted": "losses.tdpo_loss, logprobs.token_kl",
            "models": one_network + " (the reference's full-vocabulary logits at completion positions)",
            "generation": "0",
        },
        {
            "method": "RM + PPO",
            "lines": code_lines(ppo, ppo_math, reward_model),
            "counted": "rlhf/ppo.py, rlhf/ppo_math.py, rlhf/reward_model.py",
            "models": "policy + value head, reference, reward model: 2 networks with LoRA, 3 without (plus the reward "
            "model's training)",
            "generation": "1 (a rollout of rollout_batch_size prompts), then ppo_epochs passes",
        },
    ]
