"""Recipes in `trl dpo`'s documented format run unchanged under `dpo-plugin train`: a `datasets:` mixture of local
JSON files with a held-out split, and TRL's named accelerate configs."""

import json
import re

import pytest
import yaml
from helpers import make_pairs, save_checkpoint
from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, ScriptArguments, TrlParser

from dpo_plugin.cli import main
from dpo_plugin.training.launch import LaunchArguments


def trl_dpo_recipe(tmp_path, **extra) -> str:
    checkpoint = save_checkpoint(tmp_path / "tiny")
    make_pairs(6).to_json(tmp_path / "first.json")
    make_pairs(10).map(lambda row: {"prompt": "B " + row["prompt"]}).to_json(tmp_path / "second.jsonl")
    recipe = {
        "model_name_or_path": checkpoint,
        "datasets": [
            {"path": "json", "data_files": str(tmp_path / "first.json")},
            {"path": "json", "data_files": str(tmp_path / "second.jsonl"), "columns": ["prompt", "chosen", "rejected"]},
        ],
        "test_split_size": 0.25,
        "learning_rate": 5.0e-3,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "max_length": 64,
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "output_dir": str(tmp_path / "run"),
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_a_trl_dpo_recipe_with_a_datasets_mixture_trains_unchanged(tmp_path):
    recipe = trl_dpo_recipe(tmp_path)
    parser = TrlParser((ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig))
    *_, unknown = parser.parse_args_and_config(["--config", recipe], return_remaining_strings=True)
    assert unknown == []  # a recipe `trl dpo --config` reads as it is
    main(["train", "--config", recipe, "--heldout_eval_pairs", "4"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_pairs"] == 12 and metrics["heldout"]["pairs"] == 4  # 16 pairs, a quarter held out


def test_held_out_scoring_of_a_mixture_without_a_test_split_says_what_to_set(tmp_path, capsys):
    recipe = trl_dpo_recipe(tmp_path, test_split_size=None)
    with pytest.raises(SystemExit) as exited:
        main(["train", "--config", recipe, "--heldout_eval_pairs", "4"])
    assert exited.value.code == 2 and "set test_split_size" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "datasets, message",
    [
        ({"path": "json"}, "datasets must be a list of datasets, each a mapping with a `path`"),
        ([{"split": "train"}], r"datasets\[0\] has no `path`"),
        (["first.json"], r"datasets\[0\] must be a mapping of path, name, data_dir"),
        ([{"path": "json", "colums": ["prompt"]}], r"datasets\[0\]: unknown key\(s\) colums; a dataset has path"),
        ([{"path": "json"}, {"path": "json", "fraction": "half"}], r"datasets\[1\]: fraction must be a number"),
    ],
)
def test_a_broken_datasets_mixture_is_one_line_naming_the_entry(tmp_path, capsys, datasets, message):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--config", trl_dpo_recipe(tmp_path, datasets=datasets)])
    error = capsys.readouterr().err  # the fixture's own progress bars, then the one line
    assert exited.value.code == 2 and "Traceback" not in error and not (tmp_path / "run").exists()
    assert re.search(f"^dpo-plugin train: error: {message}", error.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "text, message",
    [
        ("num_processes: [1]\n", "acc.yaml: num_processes must be an integer; got [1]"),
        ("main_process_port: port\n", "acc.yaml: main_process_port must be an integer (or unset); got 'port'"),
        ("compute_environment: [\n", "acc.yaml is not valid YAML"),
        ("- 1\n", "acc.yaml must be a mapping of accelerate config keys"),
    ],
)
def test_a_broken_accelerate_config_is_one_line_naming_the_file_and_key(tmp_path, capsys, text, message):
    (tmp_path / "acc.yaml").write_text(text)
    with pytest.raises(SystemExit) as exited:
        main(["train", "--config", trl_dpo_recipe(tmp_path, accelerate_config=str(tmp_path / "acc.yaml"))])
    error = capsys.readouterr().err  # the fixture's own progress bars, then the one line
    assert exited.value.code == 2 and "Traceback" not in error and message in error.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["multi_gpu", "fsdp1", "fsdp2", "zero1", "zero2", "zero3"])
def test_trls_named_accelerate_configs_resolve_and_pass_the_checks(name):
    assert LaunchArguments(accelerate_config=name).accelerate_config.endswith(f"{name}.yaml")


def test_accelerate_launch_keys_in_a_trl_recipe_go_to_the_launcher(tmp_path):
    """`trl dpo` hands keys its dataclasses do not know to `accelerate launch`; so does `dpo-plugin train`, and
    refuses the rest."""
    from dpo_plugin.training.launch import launch_arguments
    from dpo_plugin.training.recipe import parse_recipe

    recipe = trl_dpo_recipe(tmp_path, main_process_port=29511, num_processes=2)
    *_, launch_args = parse_recipe(["--config", recipe])
    assert launch_args.wants_launch and launch_args.launcher_flags == ["--main_process_port", "29511"]
    assert launch_arguments(launch_args, "no")[-2:] == ["--main_process_port", "29511"]
    with pytest.raises(ValueError, match="main_procces_port"):
        parse_recipe(["--config", recipe, "--main_procces_port", "1"])
