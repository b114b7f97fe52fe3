"""The gold sentiment reward on the real Pang & Lee data: it reads the asked-for sentiment and its held-out accuracy
is what it reports."""

import pytest

from dpo_plugin.tasks.sentiment.gold import GoldSentimentReward
from dpo_plugin.tasks.sentiment.pairs import sentence_splits


@pytest.mark.slow
def test_gold_sentiment_reward_reads_the_wanted_sentiment_from_the_prompt(tokenizer):
    reward = GoldSentimentReward("from_prompt", tokenizer)
    good, bad = "A wonderful, moving and funny film.<eos>", "A dull, tedious and boring mess.<eos>"
    positive, negative = "Write a positive review.", "Write a negative review."
    values = reward([positive, positive, negative, negative], [good, bad, good, bad])
    assert values[0] > 0.5 > values[1] and values[3] > 0.5 > values[2]
    assert values[0] + values[2] == pytest.approx(1.0)
    classifier = reward.classifier
    assert classifier.held_out_size == 1000 and 0.7 < classifier.held_out_accuracy < 0.9
    held_out = sentence_splits()["test"]
    texts, labels = held_out[1] + held_out[-1], [1] * len(held_out[1]) + [0] * len(held_out[-1])
    correct = [
        (p > 0.5) == bool(label) for p, label in zip(classifier.positive_probability(texts), labels, strict=True)
    ]
    assert sum(correct) / len(correct) == pytest.approx(classifier.held_out_accuracy)
    with pytest.raises(ValueError, match="names neither"):
        reward(["Write a review."], [good])
    with pytest.raises(ValueError, match="Unknown gold sentiment target"):
        GoldSentimentReward("happy")
