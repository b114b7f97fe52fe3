"""A `datasets:` mixture, as `trl dpo` recipes write it: the same rows as TRL's `get_dataset` (columns, fractions,
order), through the plugin's loader, with a seeded held-out split and errors that name the part."""

import pytest
from datasets import Dataset
from helpers import make_pairs
from trl import DatasetMixtureConfig, get_dataset
from trl.scripts.utils import DatasetConfig

from dpo_plugin.data.mixture import load_mixture


@pytest.fixture
def files(tmp_path):
    first = make_pairs(6).add_column("source", ["a"] * 6)
    second = make_pairs(10).map(lambda row: {"prompt": "B " + row["prompt"]}).add_column("source", ["b"] * 10)
    first.to_json(tmp_path / "first.json")
    second.to_json(tmp_path / "second.jsonl")
    return tmp_path / "first.json", tmp_path / "second.jsonl"


def parts(files, **options) -> list[DatasetConfig]:
    return [DatasetConfig(path="json", data_files=str(file), **options) for file in files]


@pytest.mark.parametrize("options", [{}, {"columns": ["prompt", "chosen", "rejected"]}], ids=["all", "columns"])
def test_a_mixture_holds_the_rows_trl_would_load(files, options):
    ours = load_mixture(parts(files, **options), "train", None, seed=0)
    trl = get_dataset(DatasetMixtureConfig(datasets=parts(files, **options)))["train"]
    assert ours.to_list() == trl.to_list()


def test_fractions_are_shares_of_the_mixture_capped_as_trl_caps_them(files):
    shares = [
        DatasetConfig(path="json", data_files=str(file), fraction=f) for file, f in zip(files, (1, 3), strict=True)
    ]
    ours = load_mixture(shares, "train", None, seed=0)
    trl = get_dataset(DatasetMixtureConfig(datasets=shares))["train"]
    assert ours.to_list() == trl.to_list()
    assert (ours["source"].count("a"), ours["source"].count("b")) == (3, 10)  # shares 1:3, capped by the 10 b rows


def test_the_held_out_split_is_seeded(files):
    held_out = [load_mixture(parts(files), "test", 0.25, seed=7)["prompt"] for _ in range(2)]
    train = load_mixture(parts(files), "train", 0.25, seed=7)
    assert held_out[0] == held_out[1] and len(held_out[0]) == 4 and len(train) == 12
    assert not set(held_out[0]) & set(train["prompt"])
    with pytest.raises(ValueError, match="no held-out split: set test_split_size"):
        load_mixture(parts(files), "test", None, seed=7)


def test_errors_name_the_part(files, tmp_path):
    missing = [*parts(files), DatasetConfig(path="json", data_files=str(tmp_path / "third.json"))]
    with pytest.raises(ValueError, match=r"datasets\[2\] \(json, split 'train'\).*third.json"):
        load_mixture(missing, "train", None, seed=0)
    Dataset.from_list([{"question": "a", "answer": "b"}]).to_json(tmp_path / "odd.json")
    odd = [*parts(files), DatasetConfig(path="json", data_files=str(tmp_path / "odd.json"))]
    with pytest.raises(ValueError, match=r"datasets\[2\].*Unrecognised preference dataset"):
        load_mixture(odd, "train", None, seed=0)


def test_a_mixture_of_strings_and_messages_is_refused(files, tmp_path):
    Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            }
        ]
    ).to_json(tmp_path / "chat.json")
    mixed = [*parts(files), DatasetConfig(path="json", data_files=str(tmp_path / "chat.json"))]
    with pytest.raises(ValueError, match=r"one layout.*datasets\[2\] conversational"):
        load_mixture(mixed, "train", None, seed=0)
