"""`dpo-plugin online --config recipe.yaml`: on-policy rounds of sample → rank → train; write the model, the
per-round metrics and their plot."""

from __future__ import annotations

import math
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from ..online.recipe import build_online_trainer, parse_online_recipe

ROUND_CURVES = (
    ("reward/mean", "mean reward of the round's samples"),
    ("kl", "KL(π‖π_0) of the round's samples"),
    ("groups/tie_fraction", "groups tied (no pair)"),
)


def round_curves(rounds: list[dict], start_eval: dict | None) -> tuple[list[dict], tuple]:
    """The plot's points against rounds trained: round r's samples at r, the held-out evaluation after round r at
    r + 1 (before the first at 0); and the curves to draw (held-out ones first, where there are any)."""
    points = [{"step": entry["round"], **entry} for entry in rounds] + [{"step": len(rounds)}]
    evaluations = [start_eval or {}] + [heldout_metrics(entry) for entry in rounds]
    for point, evaluation in zip(points, evaluations, strict=True):
        point |= {f"heldout {key}": value for key, value in evaluation.items()}
    heldout = [key for key in (start_eval or {}) if not key.endswith("_se")]
    curves = tuple((f"heldout {key}", f"held-out {key}") for key in heldout) + ROUND_CURVES
    return [point for point in points if curves[0][0] in point], curves


def heldout_metrics(entry: dict) -> dict:
    """A round's held-out evaluation (its `eval/` keys), the prefix removed."""
    return {key.removeprefix("eval/"): value for key, value in entry.items() if key.startswith("eval/")}


def heldout_gains(start_eval: dict, last: dict, z: float = 1.959964) -> dict[str, dict]:
    """Each held-out metric's change from before the first round to after the last, `gain`, with a conservative 95%
    interval, gain ± z·√(SE_start² + SE_last²): it leaves out the positive correlation of the two evaluations (the
    same prompts and sampling seed), so the paired interval is no wider."""
    gains = {}
    for key, before in start_eval.items():
        after = last.get(f"eval/{key}")
        if key.endswith("_se") or after is None:
            continue
        gain = after - before
        half = z * math.hypot(start_eval.get(f"{key}_se", 0.0), last.get(f"eval/{key}_se", 0.0))
        gains[key] = {"before": before, "after": after, "gain": gain, "low": gain - half, "high": gain + half}
    return gains


def online(argv: list[str]) -> dict:
    """Train the recipe's rounds (a stopped run in the same output_dir resumes after its last complete round);
    write `model` files, `metrics.json` (`rounds`: one entry per round) and `rounds.png` into output_dir, held for
    this run alone (`run_folder`)."""
    from ..utils.quiet import library_progress_bars_off
    from ..utils.run_folder import run_folder

    library_progress_bars_off()  # each round re-tokenizes its pairs: the rounds' own bars say where the run is
    script_args, config, model_args = parse_online_recipe(argv)
    with run_folder(config.output_dir):  # this run's alone; one that fails before writing anything leaves no trace
        return _online(script_args, config, model_args)


def _online(script_args, config, model_args) -> dict:
    from ..utils.atomic import write_json
    from ..utils.plots import plot_training_curves

    output_dir = Path(config.output_dir)
    trainer = build_online_trainer(script_args, config, model_args)
    rounds = trainer.train()
    if trainer.interrupted_by is not None:
        signum, kept = trainer.interrupted_by, len(rounds)
        saved = f"rounds 0-{kept - 1} are saved in {output_dir}" if kept else "no round was complete"
        print(
            f"Stopped by {signal.Signals(signum).name}: {saved}. Run the same command again to resume at round {kept}."
        )
        sys.exit(128 + signum)
    trainer.save_model(output_dir)
    results = {"recipe": {"script": asdict(script_args), "model": asdict(model_args)}, "rounds": rounds}
    if trainer.start_eval is not None:
        results["start_eval"] = trainer.start_eval
        results["heldout_gain"] = heldout_gains(trainer.start_eval, rounds[-1]) if rounds else {}
    write_json(output_dir / "metrics.json", results)
    points, curves = round_curves(rounds, trainer.start_eval)
    title = f"on-policy {', '.join(config.loss_type)}, {config.samples_per_prompt} samples a prompt"
    plot_training_curves(points, output_dir / "rounds.png", title, 1, curves, x_label="rounds trained")
    for entry in rounds:
        reward, kl = entry["reward/mean"], entry["kl"]
        line = f"round {entry['round']}: samples' mean reward {reward:.3f}, KL to the start {kl:.3f}"
        heldout = [f"{key} {value:.3f}" for key, value in heldout_metrics(entry).items() if not key.endswith("_se")]
        print(f"{line}, {entry['pairs']} pairs" + (f"; held-out after it: {', '.join(heldout)}" if heldout else ""))
    for key, change in results.get("heldout_gain", {}).items():
        print(
            f"held-out {key}: {change['before']:.3f} before the first round, {change['after']:.3f} after the last: "
            f"{change['gain']:+.3f} [95%: {change['low']:+.3f}, {change['high']:+.3f}]"
        )
    print(f"Wrote {output_dir / 'metrics.json'} and {output_dir / 'rounds.png'}")
    return results
