"""`dpo-plugin bench speed` on a tiny checkpoint: every contender timed, and the raw bound computes DPO's loss."""

import json

import pytest
import torch
from helpers import make_pairs, save_checkpoint, tiny_run, write_splits

from dpo_plugin.cli import main
from dpo_plugin.experiments.bench.speed import _batches, _raw_bound, speed_table
from dpo_plugin.training.recipe import build_trainer, parse_recipe


def tiny_recipe(tmp_path, *extra):
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "pairs", make_pairs(16), make_pairs(4))
    _, *recipe = tiny_run(checkpoint, data, tmp_path / "unused", *extra)
    return recipe


def test_speed_bench_times_trl_the_plugin_and_the_raw_bound(tmp_path, capsys):
    output = tmp_path / "speed.json"
    bench = ["--bench_objectives", "dpo", "tdpo2", "--bench_steps", "2", "--bench_rounds", "2"]
    main(["bench", "speed", *tiny_recipe(tmp_path), *bench, "--bench_output", str(output)])
    results = json.loads(output.read_text())
    rows = {row["contender"]: row for row in results["rows"]}
    assert set(rows) == {
        "raw bound",
        "dpo: TRL DPOTrainer (sigmoid)",
        "dpo: PreferenceTrainer",
        "tdpo2: TRL DPOTrainer (sigmoid)",
        "tdpo2: PreferenceTrainer",
    }
    assert all(len(seconds) == 4 for seconds in results["step_seconds"].values())  # 2 rounds x 2 timed steps
    plugin = rows["dpo: PreferenceTrainer"]
    assert plugin["pairs_per_second"] == results["pairs_per_step"] / plugin["seconds_per_step"] > 0
    assert plugin["speedup_vs_trl"] > 0 and "step_time_vs_plugin_dpo" in rows["tdpo2: PreferenceTrainer"]
    assert results["model_flops_per_step"] > 0 and results["matmul_flops_per_second"] > 0
    assert plugin["model_flops_per_second"] == pytest.approx(
        results["model_flops_per_step"] / plugin["seconds_per_step"]
    )
    assert 0 < plugin["fraction_of_matmul_rate"]
    assert speed_table(results["rows"]) in capsys.readouterr().out


def test_raw_bound_computes_the_loss_the_plugin_trains(tmp_path):
    recipe = tiny_recipe(tmp_path, "--loss_type", "dpo", "--output_dir", str(tmp_path / "out"))
    data_args, args, model_args, _ = parse_recipe(recipe)
    plugin, _, _ = build_trainer(data_args, args, model_args)
    (batch,) = _batches(plugin, 1)
    raw = _raw_bound(plugin, [batch], model_args, args)
    with torch.no_grad():
        plugin_loss = plugin.compute_loss(plugin.model, batch)
    torch.testing.assert_close(raw._micro_step(batch, 1), plugin_loss, rtol=0, atol=1e-5)
