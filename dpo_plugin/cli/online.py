"""`dpo-plugin online --config recipe.yaml`: on-policy rounds of sample → rank → train; write the model, the
per-round metrics and their plot."""

from __future__ import annotations

import signal
import sys
from dataclasses import asdict
from pathlib import Path

from ..online.recipe import build_online_trainer, parse_online_recipe

ROUND_CURVES = (
    ("reward/mean", "mean reward of the samples"),
    ("kl", "KL(π‖π_0) of the samples"),
    ("groups/tie_fraction", "groups tied (no pair)"),
)


def online(argv: list[str]) -> dict:
    """Train the recipe's rounds (a stopped run in the same output_dir resumes after its last complete round);
    write `model` files, `metrics.json` (`rounds`: one entry per round) and `rounds.png` into output_dir."""
    from ..utils.atomic import removed_if_left_empty, write_json
    from ..utils.plots import plot_training_curves
    from ..utils.quiet import library_progress_bars_off

    library_progress_bars_off()  # each round re-tokenizes its pairs: the rounds' own bars say where the run is
    script_args, config, model_args = parse_online_recipe(argv)
    output_dir = Path(config.output_dir)
    with removed_if_left_empty(output_dir):  # a run that fails before writing anything leaves no trace
        trainer = build_online_trainer(script_args, config, model_args)
        rounds = trainer.train()
    if trainer.interrupted_by is not None:
        signum = trainer.interrupted_by
        print(
            f"Stopped by {signal.Signals(signum).name} during round {len(rounds)}; rounds 0-{len(rounds) - 1} are "
            f"saved in {output_dir}. Run the same command again to resume at round {len(rounds)}."
        )
        sys.exit(128 + signum)
    trainer.save_model(output_dir)
    results = {"recipe": {"script": asdict(script_args), "model": asdict(model_args)}, "rounds": rounds}
    write_json(output_dir / "metrics.json", results)
    curves = [{"step": entry["round"], **entry} for entry in rounds]
    title = f"on-policy {', '.join(config.loss_type)}, {config.samples_per_prompt} samples a prompt"
    plot_training_curves(curves, output_dir / "rounds.png", title, 1, ROUND_CURVES, x_label="round")
    for entry in rounds:
        reward, kl = entry["reward/mean"], entry["kl"]
        print(f"round {entry['round']}: mean reward {reward:.3f}, KL to the start {kl:.3f}, {entry['pairs']} pairs")
    print(f"Wrote {output_dir / 'metrics.json'} and {output_dir / 'rounds.png'}")
    return results
