"""Bad input, as a new user makes it, ends in one line naming the thing and what to do, exit code 2, no traceback and
nothing written: one table row per mistake, for every command."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import cli_error, make_model, make_pairs, make_tokenizer, save_checkpoint, tiny_run, write_splits
from safetensors.torch import load_file

from dpo_plugin.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
COLUMNS = ("prompt", "chosen", "rejected")


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """Tiny models and data files, good and broken, shared by the table."""
    root = tmp_path_factory.mktemp("fixtures")
    save_checkpoint(root / "tiny")
    write_splits(root / "pairs", make_pairs(8), make_pairs(4))
    tokenizer = make_tokenizer()
    save_checkpoint(root / "small-vocab", model=make_model(len(tokenizer) - 10), tokenizer=tokenizer)
    (root / "no-weights").mkdir()
    shutil.copy(root / "tiny" / "config.json", root / "no-weights")
    shutil.copytree(root / "tiny", root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    shutil.copytree(root / "tiny", root / "header-not-mapping")
    header = b"[1, 2]"
    (root / "header-not-mapping" / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    shutil.copytree(root / "tiny", root / "unsafe-pickle")
    state = load_file(root / "tiny" / "model.safetensors") | {"payload": RunsCode()}
    (root / "unsafe-pickle" / "model.safetensors").unlink()
    torch.save(state, root / "unsafe-pickle" / "pytorch_model.bin")
    (root / "empty.jsonl").write_text("")
    (root / "bad.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    (root / "latin1.jsonl").write_bytes(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "café"}\n'.encode("latin-1")
    )
    (root / "list-row.jsonl").write_text('["a", "b", "c"]\n')
    (root / "no-columns.jsonl").write_text('{"question": "a", "answer": "b"}\n')
    (root / "empty-folder").mkdir()
    (root / "not-yaml.yaml").write_text("model_name_or_path: [unclosed\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "typo.yaml").write_text("model_name_or_path: x\nlerning_rate: 1.0e-3\n")
    (root / "no-loss.yaml").write_text("loss_type: []\n")
    (root / "twice.yaml").write_text("beta: 0.1\nlearning_rate: 1.0e-3\nbeta: 0.5\n")
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]  # each level 10 aliases of the last: 10^5 values
    levels += [f"{name}: &{name} [{', '.join([f'*{last}'] * 10)}]" for last, name in zip("abcd", "bcde", strict=True)]
    (root / "alias-bomb.yaml").write_text("\n".join(levels) + "\n")
    shutil.copytree(root / "tiny", root / "other-shapes")
    config = json.loads((root / "tiny" / "config.json").read_text()) | {"hidden_size": 48}
    (root / "other-shapes" / "config.json").write_text(json.dumps(config))
    (root / "mixed.jsonl").write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
        '{"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "assistant", "content": "b"}], '
        '"rejected": [{"role": "assistant", "content": "c"}]}\n'
    )
    shutil.copytree(root / "tiny", root / "unsafe-template")
    (root / "unsafe-template" / "chat_template.jinja").write_text("{{ ''.__class__.__mro__ }}")
    conversation = {role: [{"role": "user" if role == "prompt" else "assistant", "content": role}] for role in COLUMNS}
    (root / "conversations.jsonl").write_text(
        (json.dumps(conversation | {"rejected": [{"role": "assistant", "content": "no"}]}) + "\n") * 4
    )
    (root / "null-beta.yaml").write_text("beta: null\n")
    (root / "list-rate.yaml").write_text("learning_rate: [1.0e-5, 2.0e-5]\n")
    (root / "mapping-flag.yaml").write_text("reference_free: {on: true}\n")
    return root


class RunsCode:
    """Pickled, it calls a function when unpickled (here a harmless one): what `weights_only` refuses."""

    def __reduce__(self):
        return (print, ("unpickled",))


def train(fx: Path, out: Path, *extra: str, model: str | None = None, data: str | None = None) -> list[str]:
    return tiny_run(model or fx / "tiny", data or fx / "pairs", out, *extra)


NO_SAMPLES = ("--eval_generations", "0")
# id -> (argv from (fixtures, output folder), words the error line must contain)
CASES = {
    "model folder missing": (
        lambda fx, out: train(fx, out, model="/no/such/model"),
        ["/no/such/model", "no such folder"],
    ),
    "model path relative": (lambda fx, out: train(fx, out, model="./no-model"), ["./no-model", "no such folder"]),
    "model without weights": (
        lambda fx, out: train(fx, out, model=fx / "no-weights"),
        ["no weights", "model.safetensors"],
    ),
    "weights truncated": (lambda fx, out: train(fx, out, model=fx / "truncated"), ["model.safetensors is truncated"]),
    "weights header not a mapping": (
        lambda fx, out: train(fx, out, model=fx / "header-not-mapping"),
        ["model.safetensors is not a safetensors file", "header is not a JSON mapping"],
    ),
    "pickle refused by weights_only": (
        lambda fx, out: train(fx, out, model=fx / "unsafe-pickle"),
        ["refuses", "pytorch_model.bin", "Unsupported global: GLOBAL print", "could run code"],
    ),
    "tokenizer past embeddings": (
        lambda fx, out: train(fx, out, model=fx / "small-vocab"),
        ["tokenizer has", "embeddings"],
    ),
    "data file missing": (lambda fx, out: train(fx, out, data="/no/data.jsonl"), ["/no/data.jsonl"]),
    "data file empty": (lambda fx, out: train(fx, out, data=fx / "empty.jsonl"), ["empty.jsonl is empty"]),
    "data line malformed": (
        lambda fx, out: train(fx, out, data=fx / "bad.jsonl"),
        ["bad.jsonl, line 2", "not valid JSON"],
    ),
    "data not utf-8": (lambda fx, out: train(fx, out, data=fx / "latin1.jsonl"), ["latin1.jsonl, line 2", "UTF-8"]),
    "data row not an object": (lambda fx, out: train(fx, out, data=fx / "list-row.jsonl"), ["line 1", "JSON object"]),
    "data columns unknown": (lambda fx, out: train(fx, out, data=fx / "no-columns.jsonl"), ["Unrecognised", "answer"]),
    "data folder empty": (
        lambda fx, out: train(fx, out, data=fx / "empty-folder"),
        ["No 'train' data", "empty-folder"],
    ),
    "batch size 0": (
        lambda fx, out: train(fx, out, "--per_device_train_batch_size", "0"),
        ["per_device_train_batch_size"],
    ),
    "learning rate negative": (lambda fx, out: train(fx, out, "--learning_rate", "-1"), ["learning_rate", ">= 0"]),
    "beta 0": (lambda fx, out: train(fx, out, "--beta", "0"), ["beta must be > 0"]),
    "loss type typo": (lambda fx, out: train(fx, out, "--loss_type", "dop"), ["loss_type ['dop']", "dpo"]),
    "key typo": (
        lambda fx, out: train(fx, out, "--lerning_rate", "1e-3"),
        ["lerning_rate", "did you mean learning_rate"],
    ),
    "key typo in recipe": (lambda fx, out: train(fx, out, "--config", str(fx / "typo.yaml")), ["learning_rate?"]),
    "recipe missing": (
        lambda fx, out: train(fx, out, "--config", "/no/recipe.yaml"),
        ["/no/recipe.yaml", "no such file"],
    ),
    "recipe not yaml": (lambda fx, out: train(fx, out, "--config", str(fx / "not-yaml.yaml")), ["not valid YAML"]),
    "recipe not a mapping": (lambda fx, out: train(fx, out, "--config", str(fx / "list.yaml")), ["YAML mapping"]),
    "recipe key given twice": (
        lambda fx, out: train(fx, out, "--config", str(fx / "twice.yaml")),
        ["key 'beta' is given twice (lines 1 and 3)", "keep one"],
    ),
    "recipe alias bomb": (
        lambda fx, out: train(fx, out, "--config", str(fx / "alias-bomb.yaml")),
        ["aliases expand to more than 10,000 values"],
    ),
    "empty loss_type list": (
        lambda fx, out: train(fx, out, "--config", str(fx / "no-loss.yaml")),
        ["loss_type is an empty list", "dpo, ipo"],
    ),
    "config not the weights' own": (
        lambda fx, out: train(fx, out, model=fx / "other-shapes"),
        ["model.safetensors holds", "config.json builds it as", "not the one these weights were saved with"],
    ),
    "string and conversational rows mixed": (
        lambda fx, out: train(fx, out, data=fx / "mixed.jsonl"),
        ["row 1, field 'prompt': a message list where row 0 has strings", "skip_invalid_rows"],
    ),
    "chat template refused by the sandbox": (
        lambda fx, out: train(fx, out, model=fx / "unsafe-template", data=fx / "conversations.jsonl"),
        ["the tokenizer's chat template failed (SecurityError", "chat_template.jinja"],
    ),
    "null where a number goes": (
        lambda fx, out: train(fx, out, "--config", str(fx / "null-beta.yaml")),
        ["beta must be a number; got None"],
    ),
    "list where a number goes": (
        lambda fx, out: train(fx, out, "--config", str(fx / "list-rate.yaml")),
        ["learning_rate must be a finite number >= 0; got [1e-05, 2e-05]"],
    ),
    "mapping where a boolean goes": (
        lambda fx, out: train(fx, out, "--config", str(fx / "mapping-flag.yaml")),
        ["reference_free must be true or false; got {"],
    ),
    "no dataset": (
        lambda fx, out: ["train", "--model_name_or_path", "x", "--output_dir", str(out), "--use_cpu", "true"],
        ["dataset_name"],
    ),
    "tdpo precomputed": (
        lambda fx, out: train(fx, out, "--loss_type", "tdpo2", "--precompute_ref_log_probs", "true"),
        ["precompute_ref_log_probs", "tdpo2"],
    ),
    "resume missing": (lambda fx, out: train(fx, out, "--resume_from_checkpoint", "/no/ckpt"), ["/no/ckpt", "no such"]),
    "resume not a checkpoint": (
        lambda fx, out: train(fx, out, "--resume_from_checkpoint", str(fx / "pairs")),
        ["not a checkpoint", "trainer_state.json"],
    ),
    "resume last, none there": (lambda fx, out: train(fx, out, "--resume_from_checkpoint", "last"), ["no checkpoint-"]),
    "accelerate config unknown": (lambda fx, out: train(fx, out, "--accelerate_config", "zero9"), ["zero9", "ddp"]),
    "eval without model": (lambda fx, out: ["eval", "--dataset_name", str(fx / "pairs")], ["model_name_or_path"]),
    "eval model missing": (
        lambda fx, out: ["eval", "--model_name_or_path", "/no/run", "--dataset_name", str(fx / "pairs"), *NO_SAMPLES],
        ["/no/run", "no such folder"],
    ),
    "ppo without reward model": (
        lambda fx, out: ["ppo", "--config", str(RECIPES / "compare" / "ppo.yaml"), "--output_dir", str(out)],
        ["reward_model_name_or_path is required"],
    ),
    "bench mode unknown": (
        lambda fx, out: ["bench", "memory", *train(fx, out)[1:], "--bench_modes", "nf5"],
        ["bench_modes", "nf4"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES), ids=sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, fx, tmp_path, capsys):
    make_argv, words = CASES[case]
    out = tmp_path / "out"
    message = cli_error(capsys, make_argv(fx, out))
    for word in words:
        assert word in message, message
    assert not out.exists(), f"{case}: {sorted(p.name for p in out.iterdir())}"


def test_debug_shows_the_traceback(fx, tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_PLUGIN_DEBUG", "")  # main exports it for launched processes; this undoes that after
    with pytest.raises(ValueError, match="learning_rate"):
        main([*train(fx, tmp_path / "out", "--learning_rate", "-1"), "--debug"])


def test_ctrl_c_outside_training_exits_130_without_a_traceback(fx, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dpo_plugin.training.recipe.load_policy", interrupted)
    with pytest.raises(SystemExit) as exited:
        main(train(fx, tmp_path / "out"))
    assert exited.value.code == 130 and capsys.readouterr().err.strip() == "dpo-plugin train: interrupted"


def test_a_launched_run_that_fails_on_bad_data_exits_2_with_the_message(fx, tmp_path, capfd):
    """The parent reads the recipe; each launched process loads the data, prints the error and exits 2; so does the
    parent, without the launcher's traceback."""
    argv = train(fx, tmp_path / "out", "--num_processes", "2", data=fx / "bad.jsonl")
    with pytest.raises(SystemExit) as exited:
        main(argv)
    stderr = capfd.readouterr().err
    assert exited.value.code == 2 and "bad.jsonl, line 2: not valid JSON" in stderr
    assert "ChildFailedError" not in stderr and not (tmp_path / "out").exists()
