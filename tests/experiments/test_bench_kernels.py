"""`dpo-plugin bench kernels` on a tiny checkpoint's head: every contender timed on the same tensors, and the
plugin's head and TRL's kernels give the same log-probs and KL (the check the benchmark reports)."""

import json

from helpers import make_pairs, save_checkpoint, tiny_run, write_splits

from dpo_plugin.cli import main


def test_kernels_bench_times_the_chunked_head_against_trls_kernels_on_the_same_work(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(4))
    _, *recipe = tiny_run(checkpoint, data, tmp_path / "unused", "--logits_block_size", "8")
    output = tmp_path / "kernels.json"
    bench = ["--bench_positions", "24", "40", "--bench_rounds", "2", "--bench_output", str(output)]
    main(["bench", "kernels", *recipe, *bench])
    results = json.loads(output.read_text())
    assert results["shapes"]["trains_head"] and results["shapes"]["plugin_block_size"] == 8
    rows = results["rows"]
    assert [(row["positions"], row["task"], row["contender"].split()[0]) for row in rows] == [
        (positions, task, contender)
        for positions in (24, 40)
        for task in ("log-probs", "TDPO log-probs + KL")
        for contender in ("PreferenceTrainer", "TRL")
    ]
    for row in rows:
        assert row["max_abs_difference"] < 1e-4  # the same values: the same work
        assert len(row["turns"]) == 2 and row["seconds"] > 0
        assert (row["x_trl"] == 1.0) == row["contender"].startswith("TRL")
    assert "| TDPO log-probs + KL | TRL log-prob + divergence kernels | 40 |" in capsys.readouterr().out
