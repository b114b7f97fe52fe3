"""Shared pytest fixtures: a character-level tokenizer, a tiny Llama built in memory, a tiny checkpoint on disk and
string preference pairs. The plain helpers they are built from live in `helpers.py`."""

import pytest

pytest.register_assert_rewrite("helpers")  # before the import below: its asserts report as a test's own do

from helpers import make_model, make_pairs, make_tokenizer, save_checkpoint  # noqa: E402


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return make_model(len(tokenizer))


@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    """A tiny Llama wide enough for bitsandbytes' CPU 4-bit blocks (64 inputs), saved with its tokenizer."""
    return save_checkpoint(tmp_path / "tiny", make_model(len(tokenizer), hidden_size=64), tokenizer)


@pytest.fixture
def pairs():
    return make_pairs()
