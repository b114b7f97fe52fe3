"""Reward functions and language-model agents: each checked against a direct computation on tiny models."""

from functools import partial

import numpy as np
import pytest
import torch
from helpers import make_model, tiny_reward_model
from torch.utils._python_dispatch import TorchDispatchMode

from dpo_plugin.evaluation.policies import CompletionSampler, PreferenceChooser
from dpo_plugin.evaluation.rewards import ImplicitReward, PreferenceLabelReward, RewardModelReward
from dpo_plugin.evaluation.scoring import SequenceScorer


def test_preference_label_reward_is_the_win_rate_of_a_labelled_completion():
    pairs = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "c"},
        {"prompt": "p", "chosen": "c", "rejected": "a"},
        {"prompt": "q", "chosen": "b", "rejected": "a"},
    ]
    reward = PreferenceLabelReward(pairs)
    assert reward(["p", "p", "p", "q"], ["a", "b", "c", "b"]) == [2 / 3, 0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="No preference label"):
        reward(["q"], ["c"])


def test_implicit_reward_is_beta_times_the_log_ratio(tokenizer, tiny_model):
    policy = SequenceScorer(tiny_model, tokenizer)
    reference = SequenceScorer(make_model(len(tokenizer), seed=1), tokenizer)
    prompts, completions = ["Q: a", "Q: bb"], [" good", " bad!"]
    expected = 0.3 * (policy(prompts, completions) - reference(prompts, completions))
    assert ImplicitReward(policy, reference, beta=0.3)(prompts, completions) == pytest.approx(expected.tolist())
    assert ImplicitReward(policy, policy, beta=0.3)(prompts, completions) == [0.0, 0.0]


def test_reward_model_batches_give_the_scores_of_single_texts(tokenizer):
    model = tiny_reward_model(tokenizer)
    prompts, completions = ["Q: a", "Q: longer prompt", "Q"], [" good", " ok", " a much longer completion"]
    batched = RewardModelReward(model, tokenizer, batch_size=3)(prompts, completions)
    with torch.no_grad():
        texts = [prompt + completion for prompt, completion in zip(prompts, completions, strict=True)]
        single = [model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item() for text in texts]
    assert batched == pytest.approx(single, abs=1e-5)


def test_reward_model_needs_one_output(tokenizer):
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModelReward(tiny_reward_model(tokenizer, num_labels=2), tokenizer)


def test_chooser_picks_the_higher_score_for_batches_and_single_observations():
    chooser = PreferenceChooser(lambda prompts, completions: [float(len(c)) for c in completions], "length")
    batch = {"prompt": ("p", "q", "r"), "completions": (("long one", "s", "same"), ("short", "longer one", "same"))}
    assert chooser(batch).tolist() == [0, 1, 0]  # the tie goes to candidate 0
    assert chooser({"prompt": "p", "completions": ("a", "bb")}) == 1


def test_sampler_stops_at_eos_keeps_it_and_scores_the_sampled_tokens(tokenizer):
    model = make_model(len(tokenizer))
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # make EOS likely, so that some rows stop early and generate pads after it
        model.lm_head.weight[eos] += 2.0
    sampler = CompletionSampler(model, tokenizer, {"max_new_tokens": 6})
    torch.manual_seed(0)
    samples = sampler.sample(["Q: a", "Q: a longer prompt", "Q"] * 4)
    assert any(ids[-1] == eos for ids in samples.completion_ids)
    for ids in samples.completion_ids:
        assert 1 <= len(ids) <= 6 and eos not in ids[:-1]
    assert samples.texts == tokenizer.batch_decode(samples.completion_ids)
    scorer = SequenceScorer(model, tokenizer)
    log_ratio = scorer.score_ids(samples.prompt_ids, samples.completion_ids) - scorer.score_ids(
        samples.prompt_ids, samples.completion_ids
    )
    assert log_ratio.abs().max() == 0.0


def test_sampler_draws_from_the_models_own_distribution(tokenizer):
    """Pure sampling: first-token frequencies over 3,000 draws match softmax(logits) within sampling error."""
    model = make_model(len(tokenizer))
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # a peaked distribution, so the test has power
    prompt = "Q: hi"
    with torch.no_grad():
        probs = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].softmax(-1).numpy()
    sampler = CompletionSampler(model, tokenizer, {"max_new_tokens": 1})
    torch.manual_seed(0)
    first = [ids[0] for _ in range(6) for ids in sampler.sample([prompt] * 500).completion_ids]
    frequencies = np.bincount(first, minlength=len(probs)) / len(first)
    top = probs.argsort()[-5:]
    assert probs[top].sum() > 0.5
    assert np.abs(frequencies[top] - probs[top]).max() < 4.5 * np.sqrt(0.25 / len(first))


class _CastCounter(TorchDispatchMode):
    """Counts the dtype casts (`aten._to_copy`) dispatched inside it."""

    casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.casts += func is torch.ops.aten._to_copy.default
        return func(*args, **(kwargs or {}))


def test_sampler_under_autocast_casts_frozen_weights_once_a_call_with_the_same_completions(tokenizer):
    model = make_model(len(tokenizer)).requires_grad_(False)
    prompts, completions, casts = ["Q: a", "Q: a longer prompt", "Q"] * 2, {}, {}
    for cache_enabled in (False, True):
        context = partial(torch.autocast, "cpu", dtype=torch.bfloat16, cache_enabled=cache_enabled)
        sampler = CompletionSampler(model, tokenizer, {"max_new_tokens": 8, "min_new_tokens": 8}, context=context)
        torch.manual_seed(0)
        with _CastCounter() as counter:
            completions[cache_enabled] = sampler.sample(prompts).completion_ids
        casts[cache_enabled] = counter.casts
    assert completions[True] == completions[False]
    linear_weights = sum(isinstance(module, torch.nn.Linear) for module in model.modules())
    assert casts[False] - casts[True] == (8 - 1) * linear_weights  # each of the 8 forwards but the first cast them
    assert not any(param.requires_grad or param.grad is not None for param in model.parameters())
