"""Shared fixtures: a character-level tokenizer and tiny randomly initialised Llama models built in memory."""

import string

import pytest
import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return make_model(len(tokenizer))


@pytest.fixture
def pairs():
    return make_pairs()
