"""`dpo-plugin bench memory` on a tiny checkpoint: one fresh process per mode, sizes and peaks reported."""

import json

from conftest import make_pairs, save_checkpoint, tiny_run, write_splits

from dpo_plugin.cli import main
from dpo_plugin.experiments.bench.memory import memory_table


def test_memory_bench_compares_reference_quantizations(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "tiny-64", hidden_size=64)
    data = write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(4))
    output = tmp_path / "bench.json"
    _, *recipe = tiny_run(checkpoint, data, tmp_path / "unused")
    bench = ["--bench_modes", "none", "nf4", "--bench_steps", "1", "--bench_output", str(output)]
    main(["bench", "memory", *recipe, *bench])
    rows = {row["ref_quantization"]: row for row in json.loads(output.read_text())["modes"]}
    full, nf4 = rows["none"], rows["nf4"]
    assert full["reference"] == nf4["reference"] == "separate model"
    assert 0 < nf4["reference_bytes"] < full["reference_bytes"] and nf4["policy_bytes"] == full["policy_bytes"]
    for row in (full, nf4):
        assert row["policy_bytes"] < row["rss_after_setup_bytes"] <= row["peak_rss_training_bytes"]
        assert row["peak_rss_training_bytes"] <= row["peak_rss_bytes"]
    assert full["gap"] is None and nf4["gap"]["sequences"] > 0
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
