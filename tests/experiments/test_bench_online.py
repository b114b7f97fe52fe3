"""`dpo-plugin bench online`: TRL's OnlineDPOTrainer and the plugin's rounds train on the same prompts with the same
reward and optimizer steps, each measured by phase and evaluated on the same held-out prompts (no timing asserted)."""

import json

from helpers import make_pairs, save_checkpoint, write_splits

from dpo_plugin.cli import main


def test_bench_online_trains_trl_and_the_plugin_alike_and_evaluates_both(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(4))
    output = tmp_path / "online.json"
    command = ["bench", "online", "--model_name_or_path", checkpoint, "--dataset_name", str(data)]
    command += ["--reward_funcs", "gold_positive", "--use_cpu", "true", "--bf16", "false", "--max_new_tokens", "4"]
    command += ["--rounds", "2", "--prompts_per_round", "4", "--per_device_train_batch_size", "2"]
    command += ["--sampling_batch_size", "2", "--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"]
    command += ["--learning_rate", "0.01", "--max_length", "48", "--gradient_checkpointing", "false"]
    command += ["--bench_eval_prompts", "4", "--output_dir", str(tmp_path / "unused"), "--report_to", "none"]
    main([*command, "--bench_output", str(output)])
    results = json.loads(output.read_text())
    trl, two, four = results["rows"]
    assert trl["contender"] == "TRL OnlineDPOTrainer" and trl["steps"] == 4 and trl["completions"] == 16
    assert (two["samples_per_prompt"], two["completions"], four["completions"]) == (2, 16, 32)
    assert 0 < two["steps"] <= 4 and 0 < four["steps"] <= 4  # one step per 2 pairs; tied groups give none
    for row in results["rows"]:
        seconds = row["seconds"]
        assert seconds["sampling"] > 0 and seconds["scoring"] >= 0 and seconds["training"] > 0
        assert abs(sum(seconds[phase] for phase in ("sampling", "scoring", "training")) - seconds["total"]) < 1e-6
        assert row["kl"] != 0.0 and row["gain"] == row["reward"] - results["start"]["reward"]  # trained: it moved
    assert results["start"]["kl"] == 0.0
    assert "TRL OnlineDPOTrainer" in capsys.readouterr().out
