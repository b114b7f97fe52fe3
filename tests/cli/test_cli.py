"""The `dpo-plugin` command: recipes parse, flags override them, a tiny run writes its outputs, bad data writes none."""

import json
from pathlib import Path

import pytest
from datasets import Dataset
from helpers import cli_error, make_pairs, make_tokenizer, save_checkpoint, tiny_reward_model, tiny_run, write_splits
from trl import TrlParser

from dpo_plugin.cli import main
from dpo_plugin.cli.evaluate import EvalConfig
from dpo_plugin.evaluation.heldout import STARTING_POINT_RANKING
from dpo_plugin.training.recipe import parse_recipe

RECIPE_DIR = Path(__file__).parents[2] / "recipes"
RECIPES = sorted(
    path
    for path in RECIPE_DIR.glob("*.yaml")
    if path.name != "eval.yaml" and "compare" not in path.name and not path.name.startswith("online")
)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_every_recipe_parses_with_no_unknown_keys(recipe):
    # --use_cpu: GPU recipes ask for bf16, which TrainingArguments refuses on a machine with no GPU otherwise
    data_args, training_args, model_args, _ = parse_recipe(["--config", str(recipe), "--use_cpu", "true"])
    assert data_args.dataset_name and model_args.model_name_or_path
    assert training_args.plugin_loss_type in ("dpo", "ipo", "tdpo1", "tdpo2")


def test_command_line_flags_override_the_recipe():
    recipe = str(RECIPES[0].parent / "quickstart.yaml")
    data_args, training_args, _, _ = parse_recipe(
        ["--config", recipe, "--beta", "0.3", "--loss_type", "tdpo2", "--max_train_pairs", "7"]
    )
    assert training_args.beta == 0.3 and training_args.plugin_loss_type == "tdpo2"
    assert data_args.max_train_pairs == 7


def test_invalid_override_is_refused_before_anything_runs():
    recipe = str(RECIPES[0].parent / "quickstart.yaml")
    with pytest.raises(ValueError, match="beta must be > 0"):
        parse_recipe(["--config", recipe, "--beta", "0"])


@pytest.fixture
def tiny_checkpoint(tmp_path):
    return save_checkpoint(tmp_path / "tiny-model")


def test_tiny_run_writes_model_metrics_and_plot(tiny_checkpoint, tmp_path):
    data = write_splits(tmp_path / "pairs", make_pairs(12), make_pairs(8))
    output_dir = tmp_path / "run"
    main(tiny_run(tiny_checkpoint, data, output_dir, "--loss_type", "tdpo2", "--heldout_eval_pairs", "8"))
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["heldout"]["pairs"] == 8
    assert 0.0 <= metrics["heldout"]["accuracy"]["policy, by implicit reward"]["value"] <= 1.0
    assert any("kl/chosen" in entry for entry in metrics["log_history"])
    assert (output_dir / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    assert (output_dir / "model.safetensors").exists()
    assert not list(output_dir.glob(".*"))  # no temporary files left behind


def test_invalid_rows_stop_the_run_before_any_output(tiny_checkpoint, tmp_path, capsys):
    bad = make_pairs(12).to_list()
    bad[5]["chosen"] = bad[5]["rejected"]
    data = write_splits(tmp_path / "pairs", Dataset.from_list(bad), make_pairs(4))
    output_dir = tmp_path / "run"
    assert "row 5, field 'chosen': identical to rejected" in cli_error(
        capsys, tiny_run(tiny_checkpoint, data, output_dir)
    )
    assert not output_dir.exists()


def test_eval_recipe_parses_and_bad_settings_are_refused():
    (config,) = TrlParser((EvalConfig,)).parse_args_and_config(["--config", str(RECIPE_DIR / "eval.yaml")])
    assert config.gold_reward == "from_prompt" and config.eval_pairs > 0
    with pytest.raises(ValueError, match="needs a reward"):
        EvalConfig(model_name_or_path="m", dataset_name="d", eval_generations=4)
    with pytest.raises(ValueError, match="gold_reward"):
        EvalConfig(model_name_or_path="m", dataset_name="d", gold_reward="happy")
    with pytest.raises(ValueError, match="model_name_or_path is required"):
        EvalConfig(dataset_name="d", eval_generations=4)  # the missing key first, not the settings it makes moot


def test_eval_runs_the_environments_on_a_trained_checkpoint(tiny_checkpoint, tmp_path, capsys):
    data = write_splits(tmp_path / "pairs", make_pairs(12), make_pairs(8))
    main(tiny_run(tiny_checkpoint, data, tmp_path / "run"))
    reward_model = tmp_path / "reward-model"
    save_checkpoint(reward_model, model=tiny_reward_model(make_tokenizer()))
    output = tmp_path / "eval.json"
    common = ["eval", "--model_name_or_path", str(tmp_path / "run"), "--dataset_name", str(data)]
    common += ["--eval_pairs", "8", "--eval_generations", "3", "--max_new_tokens", "4", "--batch_size", "2"]
    assert "set ref_model_name_or_path" in cli_error(
        capsys, [*common, "--reward_model_name_or_path", str(reward_model)]
    )
    main(
        [
            *common,
            "--ref_model_name_or_path",
            str(tiny_checkpoint),
            "--reward_model_name_or_path",
            str(reward_model),
            "--output_file",
            str(output),
        ]
    )
    report = json.loads(output.read_text())
    assert report["pairs"] == 8 and set(report["accuracy"]) == {
        "reference, by log-likelihood",
        "policy, by implicit reward",
        "policy, by log-likelihood",
    }
    assert set(report["samples"]) == {"reference", "policy"}
    assert report["samples"]["reference"]["kl"] is None and report["samples"]["policy"]["kl"] is not None
    assert len(report["samples"]["policy"]["examples"]) == 3


@pytest.mark.parametrize(
    "quantization", [["int8"], ["mixed", "--ref_bytes_budget", "0.5"]], ids=lambda settings: settings[0]
)
def test_lora_run_against_a_quantized_reference_is_evaluated_against_the_same_reference(
    quantization, tmp_path, monkeypatch
):
    """Train LoRA adapters against an int8 or a mixed-precision reference (the run saves the mixed plan it measured
    beside its weights), then `eval --ref_quantization <the same>`: the accuracies on the same held-out pairs equal
    the ones the run measured with its own reference; and `eval` against the full-precision base equals the run's
    ranking against the policy's start (zero-initialised adapters: the base)."""
    monkeypatch.setenv("DPO_PLUGIN_CACHE", str(tmp_path / "cache"))  # measured sensitivities: a cache of its own
    checkpoint = save_checkpoint(tmp_path / "tiny-64", hidden_size=64)
    data = write_splits(tmp_path / "pairs", make_pairs(12), make_pairs(16))
    run = tmp_path / "run"
    lora = ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"]
    extra = ["--ref_quantization", *quantization, "--heldout_eval_pairs", "16", "--learning_rate", "0.05", *lora]
    main(tiny_run(checkpoint, data, run, *extra))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reference"]["quantization"] == quantization[0] and metrics["reference"]["gap"]["sequences"] > 0
    if quantization[0] == "mixed":
        assert len(set(metrics["reference"]["plan"]["layers"].values())) > 1  # a mix, not one precision throughout
    output = tmp_path / "eval.json"
    common = ["eval", "--model_name_or_path", str(run), "--dataset_name", str(data), "--eval_pairs", "16"]
    main([*common, "--eval_generations", "0", "--ref_quantization", quantization[0], "--output_file", str(output)])
    evaluated = json.loads(output.read_text())
    assert evaluated["reference"]["quantization"] == quantization[0]
    assert evaluated["reference"]["memory_bytes"] == metrics["reference"]["memory_bytes"]  # the same layers held
    if quantization[0] == "mixed":
        assert evaluated["reference"]["plan"]["layers"] == metrics["reference"]["plan"]["layers"]
    trained = metrics["heldout"]["accuracy"]
    start = trained.pop(STARTING_POINT_RANKING)
    assert evaluated["accuracy"] == trained
    main([*common, "--eval_generations", "0", "--output_file", str(output)])
    assert json.loads(output.read_text())["accuracy"]["policy, by implicit reward"] == start


def test_eval_of_a_mixed_reference_needs_the_plan_its_run_saved(tiny_checkpoint, tmp_path, capsys):
    data = write_splits(tmp_path / "pairs", make_pairs(12), make_pairs(8))
    main(tiny_run(tiny_checkpoint, data, tmp_path / "run"))  # trained against a full-precision reference
    command = ["eval", "--model_name_or_path", str(tmp_path / "run"), "--dataset_name", str(data)]
    command += ["--eval_generations", "0", "--ref_quantization", "mixed"]
    assert "mixed_reference_plan.json, which does not exist" in cli_error(capsys, command)


def test_ppo_command_trains_against_a_reward_model_and_writes_its_outputs(tiny_checkpoint, tmp_path, capsys):
    data = write_splits(tmp_path / "pairs", make_pairs(12), make_pairs(4))
    reward_model = save_checkpoint(tmp_path / "reward-model", model=tiny_reward_model(make_tokenizer()))
    output = tmp_path / "ppo"
    argv = ["ppo", "--config", str(RECIPE_DIR / "compare" / "ppo.yaml"), "--model_name_or_path", str(tiny_checkpoint)]
    argv += ["--dataset_name", str(data), "--output_dir", str(output), "--lora_target_modules", "q_proj", "v_proj"]
    argv += ["--steps", "2", "--rollout_batch_size", "4", "--mini_batch_size", "2", "--max_new_tokens", "4"]
    assert "reward_model_name_or_path is required" in cli_error(capsys, argv)
    main([*argv, "--reward_model_name_or_path", reward_model])
    state = json.loads((output / "ppo_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"]] == [1, 2] and "kl/mean" in state["log_history"][0]
    assert state["step"] == 2 and (output / "adapter_model.safetensors").is_file()
    assert (output / "value_head.pt").is_file() and (output / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob(".*"))


def test_lora_on_an_8bit_base_trains_from_the_recipe_with_a_quiet_log(tiny_checkpoint, tmp_path, caplog):
    """TRL's `load_in_8bit` (LoRA on an LLM.int8 base), held-out scoring included: bitsandbytes' per-call float16-cast
    message is dropped."""
    data = write_splits(tmp_path / "pairs", make_pairs(12), make_pairs(8))
    extra = ["--load_in_8bit", "true", "--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"]
    with caplog.at_level("INFO"):
        main(
            tiny_run(
                tiny_checkpoint, data, tmp_path / "run", *extra, "--heldout_eval_pairs", "8", "--learning_rate", "0.01"
            )
        )
    assert "will be cast from" not in caplog.text
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["log_history"]
    margins = [entry["rewards/margins"] for entry in history if "rewards/margins" in entry]
    assert margins[0] == 0.0 and margins[-1] > 0.0  # starts at its base (the reference, adapters off), then learns


def test_held_out_pairs_are_also_ranked_against_the_start_when_the_reference_is_quantized(tiny_checkpoint, tmp_path):
    """With an int8 reference, held-out pairs are ranked by log π_θ − log π_0 as well, π_0 the full-precision policy
    before training: the same count as scoring the saved policy against the checkpoint it started from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_plugin.evaluation.scoring import SequenceScorer, as_text

    data = write_splits(tmp_path / "pairs", make_pairs(12), make_pairs(8))
    run = tmp_path / "run"
    extra = ["--ref_quantization", "int8", "--heldout_eval_pairs", "8", "--learning_rate", "0.01"]
    main(tiny_run(tiny_checkpoint, data, run, *extra))
    accuracy = json.loads((run / "metrics.json").read_text())["heldout"]["accuracy"]
    tokenizer = AutoTokenizer.from_pretrained(run)
    pairs = as_text(make_pairs(8), tokenizer)  # every held-out pair: the count does not depend on their order
    p, w, r = pairs["prompt"], pairs["chosen"], pairs["rejected"]
    trained, start = (
        SequenceScorer(AutoModelForCausalLM.from_pretrained(path), tokenizer, 64) for path in (run, tiny_checkpoint)
    )
    expected = ((trained(p, w) - start(p, w)) > (trained(p, r) - start(p, r))).float().mean().item()
    assert accuracy[STARTING_POINT_RANKING]["value"] == pytest.approx(expected)
    assert set(accuracy) > {"policy, by implicit reward", "reference, by log-likelihood"}


def test_held_out_scoring_works_with_precomputed_reference_log_probs(tiny_checkpoint, tmp_path, caplog):
    """No reference is held while training: the held-out pairs' reference log-probs come from the same pass before
    training, so the run ranks them as a run with a live reference does."""
    data = write_splits(tmp_path / "pairs", make_pairs(12), make_pairs(8))
    reports = {}
    for precomputed in ("true", "false"):
        run = tmp_path / f"precomputed-{precomputed}"
        extra = ["--precompute_ref_log_probs", precomputed, "--heldout_eval_pairs", "6", "--learning_rate", "0.01"]
        with caplog.at_level("INFO", logger="dpo_plugin"):
            main(tiny_run(tiny_checkpoint, data, run, *extra))
        reports[precomputed] = json.loads((run / "metrics.json").read_text())["heldout"]["accuracy"]
    assert "no reference is held while training" in caplog.text
    assert reports["true"] == reports["false"]


def test_a_rerun_never_silently_starts_over(tiny_checkpoint, tmp_path, capsys):
    """Into a folder holding an earlier run: its checkpoints name --resume_from_checkpoint last and
    --overwrite_output_dir true, a finished run the latter, and nothing is touched; --overwrite_output_dir true
    deletes the earlier run's outputs and trains afresh."""
    data = write_splits(tmp_path / "pairs", make_pairs(12), make_pairs(4))
    run = tmp_path / "run"
    main(tiny_run(tiny_checkpoint, data, run, "--save_strategy", "steps", "--save_steps", "2"))
    files = lambda: sorted(str(path.relative_to(run)) for path in run.rglob("*"))  # noqa: E731
    before = files()
    line = cli_error(capsys, tiny_run(tiny_checkpoint, data, run))
    assert f"{run} holds checkpoints of a run (checkpoint-2" in line
    assert "resume it with --resume_from_checkpoint last, or start over with --overwrite_output_dir true" in line
    assert files() == before

    finished = tmp_path / "finished"
    main(tiny_run(tiny_checkpoint, data, finished))
    line = cli_error(capsys, tiny_run(tiny_checkpoint, data, finished, "--learning_rate", "0.01"))
    assert f"{finished} holds a finished run: start over with --overwrite_output_dir true" in line

    main(tiny_run(tiny_checkpoint, data, run, "--overwrite_output_dir", "true"))
    assert "deleted" in capsys.readouterr().out
    assert not list(run.glob("checkpoint-*")) and (run / "metrics.json").is_file()
