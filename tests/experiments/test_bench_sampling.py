"""`dpo-plugin bench sampling`: every contender samples the same prompts, the table and JSON name each, and the bound
is computed from the model's own weights (no timing is asserted)."""

import json

from helpers import make_pairs, save_checkpoint, write_splits

from dpo_plugin.cli import main


def test_bench_sampling_measures_every_contender_and_the_bound(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(4))
    output = tmp_path / "sampling.json"
    command = ["bench", "sampling", "--model_name_or_path", checkpoint, "--dataset_name", str(data)]
    command += ["--reward_funcs", "gold_positive", "--use_cpu", "true", "--bf16", "false", "--max_new_tokens", "4"]
    command += ["--samples_per_prompt", "2", "--sampling_batch_size", "2", "--bench_prompts", "4"]
    command += ["--bench_baseline_batch", "4", "--bench_rounds", "1", "--output_dir", str(tmp_path / "unused")]
    main([*command, "--bench_output", str(output)])
    results = json.loads(output.read_text())
    rows = {row["contender"]: row for row in results["rows"]}
    assert set(rows) == {"generate", "CompletionSampler", "online rounds"}
    assert all(row["tokens_per_second"] > 0 and len(row["turns"]) == 1 for row in rows.values())
    assert all(0 < row["turns"][0][0] <= 4 * 2 * 4 for row in rows.values())  # at most prompts × samples × tokens
    assert rows["CompletionSampler"]["vs_completion_sampler"] == 1.0
    bound = results["bound"]
    assert bound["rows"] == 4 and bound["tokens_per_second"] > 0 and bound["bound_by"] in ("memory", "matmul")
    assert "online rounds" in capsys.readouterr().out
