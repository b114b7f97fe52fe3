"""Evaluation through the environments: accuracy equals a direct count, every pair once, sampled rewards and KL."""

import pytest
import torch
from helpers import make_model

from dpo_plugin.evaluation.heldout import (
    STARTING_POINT_RANKING,
    Accuracy,
    preference_accuracies,
    preference_accuracy,
    sampled_completions,
)
from dpo_plugin.evaluation.policies import CompletionSampler, PreferenceChooser
from dpo_plugin.evaluation.rewards import PreferenceLabelReward
from dpo_plugin.evaluation.scoring import SequenceScorer, as_text


@pytest.fixture
def text_pairs(tokenizer, pairs):
    return as_text(pairs, tokenizer)


@pytest.mark.parametrize("batch_size", [1, 5, 16, 64])
def test_label_oracle_scores_one_and_its_mirror_zero_with_each_pair_once(text_pairs, batch_size):
    seen = []
    label = PreferenceLabelReward(text_pairs)

    def recording_label(prompts, completions):
        seen.extend(prompts[: len(prompts) // 2])
        return label(prompts, completions)

    oracle = PreferenceChooser(recording_label, "label")
    assert preference_accuracy(oracle, text_pairs, batch_size).value == 1.0
    assert sorted(seen[: len(text_pairs)]) == sorted(text_pairs["prompt"])  # in order, each exactly once
    mirror = PreferenceChooser(lambda p, c: [-r for r in label(p, c)], "mirrored label")
    assert preference_accuracy(mirror, text_pairs, batch_size).value == 0.0


def test_accuracies_equal_a_direct_count_of_log_ratio_comparisons(tokenizer, text_pairs):
    policy = SequenceScorer(make_model(len(tokenizer), seed=3), tokenizer, batch_size=6)
    reference = SequenceScorer(make_model(len(tokenizer), seed=4), tokenizer, batch_size=6)
    start = SequenceScorer(make_model(len(tokenizer), seed=5), tokenizer, batch_size=6)
    accuracies = preference_accuracies(policy, reference, text_pairs, batch_size=6, start=start)
    p, w, r = text_pairs["prompt"], text_pairs["chosen"], text_pairs["rejected"]
    chosen_ratio, rejected_ratio = policy(p, w) - reference(p, w), policy(p, r) - reference(p, r)
    assert accuracies["policy, by implicit reward"].value == (chosen_ratio > rejected_ratio).float().mean().item()
    chosen_change, rejected_change = policy(p, w) - start(p, w), policy(p, r) - start(p, r)
    assert accuracies[STARTING_POINT_RANKING].value == (chosen_change > rejected_change).float().mean().item()
    assert accuracies["reference, by log-likelihood"].value == (reference(p, w) > reference(p, r)).float().mean().item()
    assert accuracies["policy, by log-likelihood"].value == (policy(p, w) > policy(p, r)).float().mean().item()


def test_wilson_interval_matches_hand_values():
    accuracy = Accuracy.of(torch.tensor([True] * 78 + [False] * 22))
    assert (accuracy.value, round(accuracy.low, 4), round(accuracy.high, 4)) == (0.78, 0.6893, 0.8500)


def test_sampled_rewards_and_kl(tokenizer, text_pairs):
    model = make_model(len(tokenizer))
    prompts = text_pairs["prompt"][:7]
    sampler = CompletionSampler(model, tokenizer, {"max_new_tokens": 5})
    calls = []

    def length(prompts, completions):
        calls.append(len(completions))
        return [float(len(c)) for c in completions]

    scorer = SequenceScorer(model, tokenizer)
    report = sampled_completions(sampler, prompts, {"length": length}, (scorer, scorer), prompts_per_call=3)
    assert report.completions == 7 and calls == [3, 3, 3]  # one reward call per vector step
    written = [example["completion"] for example in report.examples]
    assert [example["prompt"] for example in report.examples] == prompts
    assert report.rewards["length"] == pytest.approx(sum(map(len, written)) / 7)
    assert report.kl == 0.0  # a model against itself


def test_sampled_values_come_back_in_prompt_order_though_sampled_longest_first(tokenizer):
    prompts = ["a b", "a b c d e f g h", "a", "a b c d e f g h i j k l", "a b c d"]
    sampler = CompletionSampler(make_model(len(tokenizer)), tokenizer, {"max_new_tokens": 3})
    served = []

    def prompt_length(prompts, completions):
        served.append(list(prompts))
        return [float(len(prompt)) for prompt in prompts]

    report = sampled_completions(sampler, prompts, {"prompt_length": prompt_length}, prompts_per_call=2)
    assert served[:2] == [[prompts[3], prompts[1]], [prompts[4], prompts[0]]]  # longest first, two a call
    assert report.per_prompt["prompt_length"] == [float(len(prompt)) for prompt in prompts]
    assert [example["prompt"] for example in report.examples] == prompts
