"""`dpo-plugin bench memory` on a tiny checkpoint: one fresh process per mode, sizes and peaks reported; `bench heads`
(and `bench memory --bench_versus_trl true`): one fresh process per contender, on the same batches."""

import json
import subprocess
import sys

import pytest
from helpers import cli_error, make_pairs, save_checkpoint, tiny_run, write_splits

from dpo_plugin.cli import main
from dpo_plugin.experiments.bench.heads import CONTENDERS, heads_table
from dpo_plugin.experiments.bench.memory import memory_table, mode_label


def test_memory_bench_compares_reference_quantizations(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPO_PLUGIN_CACHE", str(tmp_path / "cache"))  # the mixed references' sensitivities
    checkpoint = save_checkpoint(tmp_path / "tiny-64", hidden_size=64)
    data = write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(4))
    output = tmp_path / "bench.json"
    _, *recipe = tiny_run(checkpoint, data, tmp_path / "unused")
    bench = ["--bench_modes", "none", "nf4", "mixed", "precomputed", "--bench_ref_budgets", "0.5", "1.0"]
    main(["bench", "memory", *recipe, *bench, "--bench_steps", "1", "--bench_output", str(output)])
    rows = {
        mode_label(row["ref_quantization"], row["ref_bytes_budget"]): row
        for row in json.loads(output.read_text())["modes"]
    }
    full, nf4, precomputed = rows["none"], rows["nf4"], rows["precomputed"]
    assert list(rows) == ["none", "nf4", "mixed 0.5", "mixed 1", "precomputed"]  # one mixed row per budget
    assert nf4["reference_bytes"] < rows["mixed 0.5"]["reference_bytes"] < rows["mixed 1"]["reference_bytes"]
    assert rows["mixed 1"]["reference_bytes"] == full["reference_bytes"] and rows["mixed 1"]["gap"]["sequences"] > 0
    assert rows["mixed 1"]["gap"]["logp_abs_diff_max"] < 1e-4 < rows["mixed 0.5"]["gap"]["logp_abs_diff_mean"]
    assert precomputed["reference_bytes"] == 0 and "no reference is held while training" in precomputed["reference"]
    assert full["reference"].startswith("a frozen copy") and nf4["reference"].startswith("NF4")
    assert 0 < nf4["reference_bytes"] < full["reference_bytes"] and nf4["policy_bytes"] == full["policy_bytes"]
    for row in (full, nf4, precomputed):
        assert row["policy_bytes"] < row["rss_after_setup_bytes"] <= row["peak_rss_training_bytes"]
        assert row["peak_rss_training_bytes"] <= row["peak_rss_bytes"]
    assert full["gap"] is None and nf4["gap"]["sequences"] > 0
    assert full["plan"] is None and "0 NF4" in rows["mixed 1"]["plan"] and "full precision" in rows["mixed 1"]["plan"]
    assert memory_table(list(rows.values())) in capsys.readouterr().out


def test_memory_table_ratios_are_to_the_full_precision_row():
    row = dict(policy_bytes=4e6, peak_cuda_bytes=None, seconds_per_step=1.0, gap=None)
    row |= dict(rss_after_setup_bytes=4e8, peak_rss_training_bytes=5e8, peak_rss_bytes=6e8)
    table = memory_table(
        [
            {**row, "ref_quantization": "none", "reference_bytes": 4e6},
            {**row, "ref_quantization": "nf4", "reference_bytes": 1.2e6},
        ]
    )
    assert "| none | 4.0 | 1.00 |" in table and "| nf4 | 1.2 | 0.30 |" in table


@pytest.mark.parametrize("command", [["heads"], ["memory", "--bench_versus_trl", "true"]], ids=["heads", "memory"])
def test_the_head_to_head_runs_trl_the_chunked_head_and_full_logits_on_the_same_batches(command, tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(4))
    output = tmp_path / "heads.json"
    _, *recipe = tiny_run(checkpoint, data, tmp_path / "unused")
    argv = [*recipe, "--bench_objectives", "dpo", "--bench_steps", "2", "--learning_rate", "0.01"]
    main(["bench", *command, *argv, "--bench_output", str(output)])
    results = json.loads(output.read_text())
    assert results["argv"] == [*command[1:], *argv, "--bench_output", str(output)]
    rows = results["contenders"]
    assert [row["contender"] for row in rows] == list(CONTENDERS)
    trl, chunked, full = (row["losses"] for row in rows)
    assert chunked == pytest.approx(full, abs=1e-5) and chunked == pytest.approx(trl, abs=1e-4)  # same batches
    assert all(row["peak_rss_growth_bytes"] > 0 and row["seconds_per_step"] > 0 for row in rows)
    assert heads_table(rows) in capsys.readouterr().out


def test_bench_heads_names_a_bad_objective_and_takes_no_memory_keys(tmp_path, capsys):
    _, *recipe = tiny_run(save_checkpoint(tmp_path / "tiny"), tmp_path / "pairs", tmp_path / "unused")
    bad_objective = cli_error(capsys, ["bench", "heads", *recipe, "--bench_objectives", "dpo3"])
    memory_key = cli_error(capsys, ["bench", "heads", *recipe, "--bench_modes", "nf4"])
    assert (
        "bench_objectives must be a non-empty list of dpo, ipo" in bad_objective
        and "['dpo3']" in bad_objective
        and "bench_modes" in memory_key
    )


def test_the_head_to_head_imports_no_memory_bench():
    """`bench memory` forwards to `bench heads`, never the other way round."""
    imported = "import sys, dpo_plugin.experiments.bench.heads; print(*sorted(sys.modules))"
    modules = subprocess.run(
        [sys.executable, "-c", imported], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "dpo_plugin.experiments.bench.heads" in modules and "dpo_plugin.experiments.bench.memory" not in modules
