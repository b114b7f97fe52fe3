"""sentiment-generation: review-prefix prompts, gold-ranked pairs, whole-or-nothing builds, cache and built-in."""

import json

import pytest
from helpers import make_model, make_tokenizer

from dpo_plugin.data import load_builtin, load_preference_dataset
from dpo_plugin.tasks.sentiment import generation
from dpo_plugin.tasks.sentiment.generation import (
    SentimentGenerationSettings,
    build_sentiment_generation,
    gold_ranked_pairs,
    prompt_prefixes,
    sentiment_generation,
)
from dpo_plugin.tasks.sentiment.gold import GoldSentimentReward
from dpo_plugin.tasks.sentiment.pairs import sentence_splits
from dpo_plugin.utils import atomic

COLUMNS = ["id", "prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"]
EVERY_PROMPT = SentimentGenerationSettings(train_prompts=2998, test_prompts=1000)
TINY = SentimentGenerationSettings(train_prompts=6, test_prompts=3, samples_per_prompt=4, max_new_tokens=12)


def word_prefixes(texts):
    """Every prefix of 1 to 8 whitespace-separated words of each text."""
    return {" ".join(text.split()[:count]) for text in texts for count in range(1, 9)}


# --- prompts ------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # reads the real Pang & Lee sentences (and trains the gold classifier)
def test_prompts_are_2_to_8_word_prefixes_of_sentences_of_their_own_split():
    splits = sentence_splits()
    prompts = prompt_prefixes(EVERY_PROMPT)
    train_sentences = {text for texts in splits["train"].values() for text in texts}
    test_sentences = {text for texts in splits["test"].values() for text in texts}
    assert not train_sentences & test_sentences
    for split, split_prompts in prompts.items():
        assert len(split_prompts) == EVERY_PROMPT.prompt_count(split)
        assert {len(prompt.split()) for prompt in split_prompts} == set(range(2, 9))
        assert all(prompt == prompt.strip() for prompt in split_prompts)
        by_label = {label: word_prefixes(texts) for label, texts in splits[split].items()}
        assert all(prompt in by_label[1] | by_label[-1] for prompt in split_prompts)
        for label_prefixes in by_label.values():  # both labels give prompts
            assert sum(prompt in label_prefixes for prompt in split_prompts) > len(split_prompts) / 3


@pytest.mark.slow  # reads the real Pang & Lee sentences (and trains the gold classifier)
def test_prompts_are_seeded_and_a_smaller_setting_takes_the_first_ones():
    small = prompt_prefixes(SentimentGenerationSettings(train_prompts=10, test_prompts=5))
    assert small == prompt_prefixes(SentimentGenerationSettings(train_prompts=10, test_prompts=5))
    every = prompt_prefixes(EVERY_PROMPT)
    assert small == {"train": every["train"][:10], "test": every["test"][:5]}
    assert prompt_prefixes(SentimentGenerationSettings(train_prompts=10, test_prompts=5, seed=1)) != small


@pytest.mark.slow  # reads the real Pang & Lee sentences (and trains the gold classifier)
def test_settings_refuse_what_cannot_be_built():
    with pytest.raises(ValueError, match="samples_per_prompt must be an integer >= 2"):
        SentimentGenerationSettings(samples_per_prompt=1)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        SentimentGenerationSettings(batch_size=0)
    with pytest.raises(ValueError, match="train_prompts must be at most 2998"):
        prompt_prefixes(SentimentGenerationSettings(train_prompts=3000))
    assert SentimentGenerationSettings().cache_key() == SentimentGenerationSettings().cache_key()
    assert SentimentGenerationSettings(seed=1).cache_key() != SentimentGenerationSettings().cache_key()


# --- pairing --------------------------------------------------------------------------------------------------------


def test_pairs_match_the_best_with_the_worst_and_drop_ties():
    # ranked b (0.9), e (0.7), c (0.5), a (0.2), d (0.1): b over d, e over a; the middle c is unused
    assert gold_ranked_pairs(["a", "b", "c", "d", "e"], [0.2, 0.9, 0.5, 0.1, 0.7]) == [(1, 3), (4, 0)]
    # ranked c, a, b, d (a stable sort): c over d; a and b tie, so that pair is dropped
    assert gold_ranked_pairs(["a", "b", "c", "d"], [0.5, 0.5, 0.9, 0.1]) == [(2, 3)]
    assert gold_ranked_pairs(["same", "same"], [0.9, 0.1]) == []
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        gold_ranked_pairs(["a", "b"], [0.5])


# --- the gold reward of the whole text ---------------------------------------------------------------------------


@pytest.mark.slow  # reads the real Pang & Lee sentences (and trains the gold classifier)
def test_gold_reward_with_prompt_classifies_prompt_plus_completion():
    tokenizer = make_tokenizer()
    prompts = ["a wonderful , moving", "a dull , tedious"]
    completions = [" film that bores<eos>", " film that delights<eos>"]
    classifier = GoldSentimentReward("positive").classifier
    whole = GoldSentimentReward("positive", tokenizer, with_prompt=True)(prompts, completions)
    alone = GoldSentimentReward("positive", tokenizer)(prompts, completions)
    texts = [prompt + completion.replace("<eos>", " ") for prompt, completion in zip(prompts, completions, strict=True)]
    assert whole == pytest.approx(classifier.positive_probability(texts))
    assert alone == pytest.approx(classifier.positive_probability([c.replace("<eos>", " ") for c in completions]))
    assert whole != pytest.approx(alone)


# --- building, publishing, caching ------------------------------------------------------------------------------


def build_tiny(folder, settings=TINY):
    tokenizer = make_tokenizer()
    return build_sentiment_generation(folder, settings, make_model(len(tokenizer)), tokenizer)


@pytest.mark.slow  # reads the real Pang & Lee sentences (and trains the gold classifier)
def test_build_writes_gold_ranked_pairs_that_load_as_preference_data(tmp_path):
    target = tmp_path / "sg"
    (tmp_path / ".staging-sg").mkdir()  # left by an interrupted build
    (tmp_path / ".staging-sg" / "junk.jsonl").write_text("{}\n")
    assert build_tiny(target) == target
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sg"]
    assert sorted(path.name for path in target.iterdir()) == ["meta.json", "test.jsonl", "train.jsonl"]
    meta = json.loads((target / "meta.json").read_text())
    prompts = prompt_prefixes(TINY)
    gold = GoldSentimentReward("positive", make_tokenizer(), with_prompt=True)
    for split in ("train", "test"):
        rows = load_preference_dataset(str(target), split)
        assert rows.column_names == COLUMNS and len(rows) >= 1
        assert meta["splits"][split]["pairs"] == len(rows) <= 2 * len(prompts[split])
        assert rows["id"] == [f"sg-{split}-{index:05d}" for index in range(len(rows))]
        assert set(rows["prompt"]) <= set(prompts[split])
        assert all(row["chosen_gold"] > row["rejected_gold"] for row in rows)
        assert gold(rows["prompt"], rows["chosen"]) == pytest.approx(rows["chosen_gold"])
        assert gold(rows["prompt"], rows["rejected"]) == pytest.approx(rows["rejected_gold"])
    assert meta["settings"]["train_prompts"] == 6 and meta["gold_reward"]["scores"] == "prompt + completion"
    rebuilt = build_tiny(tmp_path / "again")
    assert (rebuilt / "train.jsonl").read_text() == (target / "train.jsonl").read_text()  # seeded sampling


@pytest.mark.slow  # reads the real Pang & Lee sentences (and trains the gold classifier)
def test_a_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    def fail(staging, target):
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "publish_folder", fail)
    with pytest.raises(OSError, match="disk full"):
        build_tiny(tmp_path / "sg")
    assert list(tmp_path.iterdir()) == []


def test_the_cached_dataset_is_built_once_and_served_as_a_builtin(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_PLUGIN_CACHE", str(tmp_path))
    builds = []

    def fake_build(folder, settings):
        builds.append(settings)
        folder.mkdir(parents=True)
        row = {"id": "sg-train-00000", "prompt": "the film", "chosen": " shines", "rejected": " sags"}
        for split in ("train", "test"):
            (folder / f"{split}.jsonl").write_text(json.dumps({**row, "chosen_gold": 0.9, "rejected_gold": 0.2}))

    monkeypatch.setattr(generation, "build_sentiment_generation", fake_build)
    folder = sentiment_generation()
    assert folder == tmp_path / "sentiment-generation" / SentimentGenerationSettings().cache_key()
    assert sentiment_generation() == folder and builds == [SentimentGenerationSettings()]
    dataset = load_builtin("sentiment-generation", "test")
    assert dataset.column_names == COLUMNS and dataset[0]["chosen"] == " shines"
    assert load_preference_dataset("sentiment-generation", "train")[0]["rejected"] == " sags"
    assert builds == [SentimentGenerationSettings()]


@pytest.mark.slow
def test_real_model_build_gives_gold_ranked_continuations(tmp_path):
    settings = SentimentGenerationSettings(train_prompts=8, test_prompts=4, max_new_tokens=8)
    folder = build_sentiment_generation(tmp_path / "sg", settings)
    meta = json.loads((folder / "meta.json").read_text())
    prompts = prompt_prefixes(settings)
    for split in ("train", "test"):
        rows = load_preference_dataset(str(folder), split)
        assert 1 <= len(rows) <= len(prompts[split]) and rows.column_names == COLUMNS
        assert set(rows["prompt"]) <= set(prompts[split])
        assert all(row["chosen_gold"] > row["rejected_gold"] and row["chosen"] != row["rejected"] for row in rows)
        assert all(0.0 <= row["rejected_gold"] < row["chosen_gold"] <= 1.0 for row in rows)
        assert meta["splits"][split]["mean_chosen_gold"] > meta["splits"][split]["mean_rejected_gold"]
    assert 0.7 < meta["gold_reward"]["held_out_accuracy"] < 0.9
