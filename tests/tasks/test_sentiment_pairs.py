"""`sentiment-pairs` on the real Pang & Lee sentences (slow): split sizes, no shared sentence, no repeated pair,
determinism, and the label the prompt asks for."""

from collections import Counter

import pytest

from dpo_plugin.data import load_builtin, read_polarity
from dpo_plugin.tasks.sentiment.pairs import SENTIMENT_PROMPTS


@pytest.fixture(scope="module")
def sentiment_pairs():
    return {split: load_builtin("sentiment-pairs", split) for split in ("train", "test")}


def completions(dataset, field: str) -> list[str]:
    return [messages[0]["content"] for messages in dataset[field]]


@pytest.mark.slow
def test_sentiment_pairs_split_sizes_and_ids(sentiment_pairs):
    assert len(sentiment_pairs["train"]) == 6000
    assert len(sentiment_pairs["test"]) == 2000
    for split, dataset in sentiment_pairs.items():
        assert dataset["id"] == [f"sp-{split}-{index:05d}" for index in range(len(dataset))]


@pytest.mark.slow
def test_sentiment_pairs_share_no_sentence_between_splits(sentiment_pairs):
    sentences = {
        split: set(completions(dataset, "chosen")) | set(completions(dataset, "rejected"))
        for split, dataset in sentiment_pairs.items()
    }
    assert sentences["train"].isdisjoint(sentences["test"])
    assert len(sentences["train"]) == 3000 and len(sentences["test"]) == 1000


@pytest.mark.slow
def test_sentiment_pairs_never_repeat_a_pair(sentiment_pairs):
    for dataset in sentiment_pairs.values():
        keys = [
            (p[0]["content"], c[0]["content"], r[0]["content"])
            for p, c, r in zip(dataset["prompt"], dataset["chosen"], dataset["rejected"], strict=True)
        ]
        assert len(set(keys)) == len(keys)


@pytest.mark.slow
def test_sentiment_pairs_are_deterministic(sentiment_pairs):
    for split, dataset in sentiment_pairs.items():
        assert load_builtin("sentiment-pairs", split).to_list() == dataset.to_list()


@pytest.mark.slow
def test_sentiment_pairs_choose_the_label_the_prompt_asks_for(sentiment_pairs):
    label_of = {text.text: text.label for text in read_polarity("sentences")}
    label_asked = {prompt: label for label, prompt in SENTIMENT_PROMPTS.items()}
    for dataset in sentiment_pairs.values():
        wanted = [label_asked[messages[0]["content"]] for messages in dataset["prompt"]]
        assert [label_of[text] for text in completions(dataset, "chosen")] == wanted
        assert [-label_of[text] for text in completions(dataset, "rejected")] == wanted
        assert Counter(wanted) == {1: len(dataset) // 2, -1: len(dataset) // 2}
