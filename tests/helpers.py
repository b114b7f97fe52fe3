"""Plain helpers the tests import with `from helpers import ...`: a character-level tokenizer with a chat template,
tiny randomly initialised Llama models (causal LM and reward model) built in memory and saved as checkpoints, string
preference pairs and their splits on disk, the argv of a tiny `dpo-plugin train` run, tiny training arguments, a
trainer against an NF4 reference, and checks of checkpoints, logged steps and one-line CLI errors.

`tests/` is on `sys.path` because `conftest.py` lives there; `conftest.py` has pytest rewrite this module's asserts."""

import json
import string
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable character, plus <pad>/<eos>/<unk>, with a small chat template."""
    specials = ["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {token: i for i, token in enumerate(specials + list(string.printable))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=specials[3:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_model(vocab_size: int, seed: int = 0, hidden_size: int = 32) -> LlamaForCausalLM:
    """A 2-layer Llama with hidden size 32 (64 for bitsandbytes' CPU 4-bit kernels, whose blocks hold 64 inputs):
    random weights, seconds to train on a CPU."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def save_checkpoint(folder, model=None, tokenizer=None, hidden_size: int = 32):
    """Save `model` (default: a fresh `make_model`) with `tokenizer` (default: `make_tokenizer`); returns the path."""
    tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
    model = model if model is not None else make_model(len(tokenizer), hidden_size=hidden_size)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def make_pairs(n: int = 16) -> Dataset:
    """String preference pairs of varied lengths, so batches mix padding and completion lengths."""
    rows = []
    for i in range(n):
        rows.append(
            {
                "prompt": f"Q{i}: say something {'nice' if i % 2 else 'kind'}" + "!" * (i % 3),
                "chosen": " good" * (1 + i % 4),
                "rejected": " bad" + " no" * (i % 5),
            }
        )
    return Dataset.from_list(rows)


CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "dpo_plugin_state.json")


def write_splits(folder: Path, train: Dataset, test: Dataset) -> Path:
    folder.mkdir()
    train.to_json(folder / "train.jsonl")
    test.to_json(folder / "test.jsonl")
    return folder


def tiny_run(checkpoint, data, output_dir, *extra):
    return [
        "train",
        "--model_name_or_path",
        str(checkpoint),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(output_dir),
        "--use_cpu",
        "true",
        "--bf16",
        "false",
        "--gradient_checkpointing",
        "false",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "3",
        "--max_length",
        "64",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def tiny_reward_model(tokenizer, num_labels=1):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForSequenceClassification(config).eval()


def assert_only_complete_checkpoints(output_dir: Path, steps: list[int]) -> None:
    assert sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*")) == steps
    for step in steps:
        checkpoint = output_dir / f"checkpoint-{step}"
        assert all((checkpoint / name).is_file() for name in CHECKPOINT_FILES)
        assert list(checkpoint.glob("rng_state*.pth"))  # one per process
    assert not [p.name for p in [*output_dir.iterdir(), *output_dir.parent.iterdir()] if p.name.startswith(".")]


def logged_steps(run: Path) -> list[dict]:
    return [entry for entry in json.loads((run / "metrics.json").read_text())["log_history"] if "loss" in entry]


def tiny_args(config_cls, tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=1,
        report_to="none",
        seed=0,
        save_strategy="no",
        max_length=64,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return config_cls(**(settings | overrides))


def quantized_trainer(checkpoint, tokenizer, tmp_path, pairs=None, peft_config=None, device="cpu", **overrides):
    """A `PreferenceTrainer` of `checkpoint` against an NF4 reference of it (2 steps; `overrides` change that)."""
    from transformers import AutoModelForCausalLM

    from dpo_plugin import PreferenceConfig, PreferenceTrainer

    settings = dict(max_steps=2, ref_quantization="nf4", ref_gap_batches=2, use_cpu=device == "cpu") | overrides
    return PreferenceTrainer(
        model=AutoModelForCausalLM.from_pretrained(checkpoint),
        args=tiny_args(PreferenceConfig, tmp_path / "out", **settings),
        train_dataset=pairs if pairs is not None else make_pairs(),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def cli_error(capsys, argv: list[str]) -> str:
    """Run `dpo-plugin <argv>` in this process, expecting a user error: exit code 2 and one line on stderr, no
    traceback; returns that line."""
    from dpo_plugin.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    stderr = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2, stderr
    assert stderr and stderr[-1].startswith(f"dpo-plugin {argv[0]}: error: "), stderr
    assert not any("Traceback" in line for line in stderr), stderr
    return stderr[-1]
