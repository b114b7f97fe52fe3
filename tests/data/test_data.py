"""Fast tests of dpo_plugin.data: formats, validation and loading on small datasets built here."""

from __future__ import annotations

import json
import logging

import pytest
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from dpo_plugin.data import (
    BUILTIN_DATASETS,
    InvalidPreferenceData,
    PreferenceFormat,
    detect_format,
    load_preference_dataset,
    loading,
    normalize_preference_dataset,
    validate_preference_dataset,
)

# Every whitespace-separated word is one token, so "user: a b\nassistant:" is 4 tokens.
WORD_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def string_rows(count: int = 3) -> list[dict[str, str]]:
    return [
        {"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"} for i in range(count)
    ]


def conversational_rows(count: int = 3) -> list[dict[str, list[dict[str, str]]]]:
    return [
        {"prompt": [user(f"question {i}")], "chosen": [assistant(f"good {i}")], "rejected": [assistant(f"bad {i}")]}
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    """A hub-free tokenizer: one token per word, with a simple chat template."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "<eos>": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="<eos>",
        chat_template=WORD_CHAT_TEMPLATE,
    )


# --- formats -------------------------------------------------------------------------------------------------------


def test_standard_strings_pass_unchanged():
    dataset = Dataset.from_list(string_rows())
    assert detect_format(dataset) is PreferenceFormat.STANDARD
    assert normalize_preference_dataset(dataset).to_list() == string_rows()


def test_explicit_conversational_passes_unchanged_and_keeps_other_columns():
    rows = [{"id": f"pair-{i}", **row} for i, row in enumerate(conversational_rows())]
    dataset = Dataset.from_list(rows)
    assert detect_format(dataset) is PreferenceFormat.CONVERSATIONAL
    assert normalize_preference_dataset(dataset).to_list() == rows


def test_implicit_prompt_is_split_off_the_shared_turns():
    shared = [user("hi"), assistant("hello"), user("name a colour")]
    dataset = Dataset.from_list([{"chosen": [*shared, assistant("blue")], "rejected": [*shared, assistant("no")]}])
    assert detect_format(dataset) is PreferenceFormat.IMPLICIT_CONVERSATIONAL
    [row] = normalize_preference_dataset(dataset).to_list()
    assert row == {"prompt": shared, "chosen": [assistant("blue")], "rejected": [assistant("no")]}


def test_string_prompt_beside_whole_conversations_takes_the_prompt_from_the_conversations():
    """UltraFeedback-binarized style: a string prompt column, and chosen/rejected repeating the user turn."""
    rows = [
        {"prompt": "sky?", "chosen": [user("sky?"), assistant("blue")], "rejected": [user("sky?"), assistant("red")]}
    ]
    dataset = Dataset.from_list(rows)
    assert detect_format(dataset) is PreferenceFormat.IMPLICIT_CONVERSATIONAL
    [row] = normalize_preference_dataset(dataset).to_list()
    assert row == {"prompt": [user("sky?")], "chosen": [assistant("blue")], "rejected": [assistant("red")]}


def test_hh_rlhf_multi_turn_transcripts_become_messages():
    dialogue = "\n\nHuman: hi there\n\nAssistant: Hello! How can I help?\n\nHuman: what is 2+2?"
    dataset = Dataset.from_list([{"chosen": dialogue + "\n\nAssistant: 4", "rejected": dialogue + "\n\nAssistant: 5"}])
    assert detect_format(dataset) is PreferenceFormat.HH_RLHF
    [row] = normalize_preference_dataset(dataset).to_list()
    assert row == {
        "prompt": [user("hi there"), assistant("Hello! How can I help?"), user("what is 2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
    }


def test_hh_rlhf_transcripts_with_different_dialogues_name_the_row():
    ok = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    diverging = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: x\n\nAssistant: c"}
    with pytest.raises(ValueError, match=r"Row 1: the chosen and rejected HH-RLHF transcripts differ"):
        normalize_preference_dataset(Dataset.from_list([ok, diverging]))


def test_hh_rlhf_transcript_that_does_not_end_with_the_assistant_names_row_and_field():
    ok = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    broken = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a"}
    with pytest.raises(ValueError, match=r"Row 1, field 'rejected': not an HH-RLHF transcript"):
        normalize_preference_dataset(Dataset.from_list([ok, broken]))


def test_unknown_format_lists_the_accepted_formats_and_the_columns_found():
    dataset = Dataset.from_list([{"question": "q", "answer_a": "a", "answer_b": "b"}])
    with pytest.raises(ValueError, match=r"columns \['answer_a', 'answer_b', 'question'\]") as error:
        normalize_preference_dataset(dataset)
    for layout in PreferenceFormat:
        assert layout.value in str(error.value)


# --- validation ----------------------------------------------------------------------------------------------------


def test_valid_dataset_is_returned_whole(word_tokenizer):
    dataset = Dataset.from_list(conversational_rows())
    assert validate_preference_dataset(dataset, word_tokenizer, max_length=64) is dataset


BAD_STRING_ROWS = [
    pytest.param({"chosen": None}, "chosen", "missing (None)", id="none"),
    pytest.param({"rejected": "   "}, "rejected", "empty string", id="blank"),
    pytest.param({"prompt": ""}, "prompt", "empty string", id="empty-prompt"),
    pytest.param({"rejected": "good answer 1"}, "chosen", "identical to rejected", id="identical"),
]


@pytest.mark.parametrize(("change", "field", "reason"), BAD_STRING_ROWS)
def test_bad_string_row_is_named_with_its_field(word_tokenizer, change, field, reason):
    rows = string_rows()
    rows[1].update(change)
    with pytest.raises(InvalidPreferenceData) as error:
        validate_preference_dataset(Dataset.from_list(rows), word_tokenizer, max_length=64, name="eval")
    message = str(error.value)
    assert f"row 1, field '{field}': {reason}" in message
    assert "'eval' dataset" in message and "skip_invalid_rows: true" in message


BAD_MESSAGE_ROWS = [
    pytest.param({"chosen": []}, "chosen", "empty message list", id="empty-list"),
    pytest.param({"chosen": [assistant("")]}, "chosen", "message with empty or non-string content", id="empty-content"),
    pytest.param({"rejected": [{"content": "bad 1"}]}, "rejected", "message without a role", id="no-role"),
    pytest.param({"rejected": [assistant("good 1")]}, "chosen", "identical to rejected", id="identical"),
]


@pytest.mark.parametrize(("change", "field", "reason"), BAD_MESSAGE_ROWS)
def test_bad_conversational_row_is_named_with_its_field(word_tokenizer, change, field, reason):
    rows = conversational_rows()
    rows[1].update(change)
    with pytest.raises(InvalidPreferenceData, match=rf"row 1, field '{field}': {reason}"):
        validate_preference_dataset(Dataset.from_list(rows), word_tokenizer, max_length=64)


def test_non_string_column_is_reported(word_tokenizer):
    rows = [{"prompt": "q", "chosen": 1, "rejected": 2}]
    with pytest.raises(InvalidPreferenceData, match=r"row 0, field 'chosen': int instead of a string"):
        validate_preference_dataset(Dataset.from_list(rows), word_tokenizer, max_length=None)


def test_missing_column_is_named(word_tokenizer):
    dataset = Dataset.from_list([{"prompt": "q", "chosen": "a"}])
    with pytest.raises(InvalidPreferenceData, match=r"lacks the column\(s\) \['rejected'\]"):
        validate_preference_dataset(dataset, word_tokenizer, max_length=None)


def test_conversational_prompt_that_fills_max_length_is_rejected(word_tokenizer):
    rows = conversational_rows()
    rows[2]["prompt"] = [user("one two three")]  # "user: one two three\nassistant:" is 5 tokens
    dataset = Dataset.from_list(rows)
    assert validate_preference_dataset(dataset, word_tokenizer, max_length=6) is dataset
    with pytest.raises(InvalidPreferenceData, match=r"row 2, field 'prompt': too long for max_length; .*found 5"):
        validate_preference_dataset(dataset, word_tokenizer, max_length=5)


def test_string_prompt_is_tokenized_without_a_chat_template(word_tokenizer):
    dataset = Dataset.from_list(string_rows())  # "question i" is 2 tokens
    assert validate_preference_dataset(dataset, word_tokenizer, max_length=3) is dataset
    with pytest.raises(InvalidPreferenceData, match=r"3 invalid row\(s\) of 3 \(3 x prompt: too long"):
        validate_preference_dataset(dataset, word_tokenizer, max_length=2)


def test_skip_mode_drops_bad_rows_and_logs_counts_per_reason(word_tokenizer, caplog):
    rows = string_rows(6)
    rows[0]["chosen"] = ""
    rows[3]["chosen"] = ""
    rows[4]["rejected"] = rows[4]["chosen"]
    with caplog.at_level(logging.WARNING, logger="dpo_plugin"):
        kept = validate_preference_dataset(Dataset.from_list(rows), word_tokenizer, max_length=64, skip_invalid=True)
    assert kept["prompt"] == ["question 1", "question 2", "question 5"]
    assert "Dropped 3 invalid row(s) of 6" in caplog.text
    assert "2 x chosen: empty string" in caplog.text and "1 x chosen: identical to rejected" in caplog.text


def test_skip_mode_raises_when_nothing_is_left(word_tokenizer):
    rows = [{"prompt": "q", "chosen": "same", "rejected": "same"}]
    with pytest.raises(InvalidPreferenceData, match="nothing is left"):
        validate_preference_dataset(Dataset.from_list(rows), word_tokenizer, max_length=None, skip_invalid=True)


# --- loading -------------------------------------------------------------------------------------------------------


def write_rows(path, rows: list[dict]) -> None:
    """Write ``rows`` in the format named by the suffix of ``path``."""
    dataset = Dataset.from_list(rows)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".jsonl":
        dataset.to_json(path, lines=True)
    elif path.suffix == ".csv":
        dataset.to_csv(path, index=False)
    else:
        dataset.to_parquet(path)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_local_file_loads_as_the_train_split(tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    write_rows(path, string_rows())
    assert load_preference_dataset(str(path), "train").to_list() == string_rows()


def test_local_file_has_no_other_split(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_rows(path, string_rows())
    with pytest.raises(ValueError, match="only split is 'train'"):
        load_preference_dataset(str(path), "test")


def test_folder_gives_one_split_per_file_name(tmp_path):
    write_rows(tmp_path / "train.jsonl", conversational_rows(3))
    write_rows(tmp_path / "test-00000-of-00001.jsonl", conversational_rows(2))
    assert len(load_preference_dataset(str(tmp_path), "train")) == 3
    assert load_preference_dataset(str(tmp_path), "test").to_list() == conversational_rows(2)


def test_folder_without_the_split_lists_its_files(tmp_path):
    write_rows(tmp_path / "train.csv", string_rows())
    with pytest.raises(ValueError, match=r"No 'test' data in folder .*found \['train.csv'\]"):
        load_preference_dataset(str(tmp_path), "test")


def test_missing_data_file_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such data file"):
        load_preference_dataset(str(tmp_path / "typo.jsonl"), "train")


def test_builtin_name_is_loaded_from_the_registry(monkeypatch):
    monkeypatch.setitem(
        BUILTIN_DATASETS, "tiny-builtin", lambda split: Dataset.from_list(string_rows(2 if split == "test" else 4))
    )
    assert len(load_preference_dataset("tiny-builtin", "test")) == 2
    with pytest.raises(ValueError, match="config='x' applies only to hub datasets"):
        load_preference_dataset("tiny-builtin", "train", config="x")


def test_hub_failure_says_the_name_was_treated_as_a_hub_id(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(loading.datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="loaded as a Hugging Face Hub dataset id") as error:
        load_preference_dataset("someone/no-such-dataset", "train")
    assert "no network" in str(error.value) and "sentiment-pairs" in str(error.value)
