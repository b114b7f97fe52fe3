"""The Bradley–Terry reward model: its config, pairwise accuracy, and TRL's RewardTrainer on a tiny checkpoint."""

import pytest
import torch
from helpers import make_pairs, save_checkpoint
from transformers import AutoModelForSequenceClassification

from dpo_plugin.evaluation.heldout import Accuracy
from dpo_plugin.rlhf.reward_model import RewardModelConfig, pairwise_accuracy, train_reward_model


def length_reward(prompts, completions):
    return [float(len(completion)) for completion in completions]


def test_pairwise_accuracy_counts_pairs_whose_chosen_scores_higher_and_ties_as_wrong():
    pairs = [
        {"prompt": "p", "chosen": "longer", "rejected": "short"},
        {"prompt": "q", "chosen": "tie", "rejected": "eit"},
        {"prompt": "r", "chosen": "s", "rejected": "longer"},
        {"prompt": "s", "chosen": "much longer", "rejected": "x"},
    ]
    calls = []

    def recording_reward(prompts, completions):
        calls.append((list(prompts), list(completions)))
        return length_reward(prompts, completions)

    accuracy = pairwise_accuracy(recording_reward, pairs, batch_size=3)
    assert accuracy == Accuracy.of(torch.tensor([True, False, False, True]))
    assert accuracy.low < 0.5 < accuracy.high
    assert calls[0] == (["p", "q", "r"] * 2, ["longer", "tie", "s", "short", "eit", "longer"])
    assert calls[1] == (["s", "s"], ["much longer", "x"])


def test_pairwise_accuracy_refuses_wrong_reward_counts_and_empty_pairs():
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    with pytest.raises(ValueError, match="returned 1 rewards, expected 2"):
        pairwise_accuracy(lambda prompts, completions: [0.0], pairs)
    with pytest.raises(ValueError, match="pairs is empty"):
        pairwise_accuracy(length_reward, [])


def test_config_is_validated_and_runs_on_the_cpu_without_bf16():
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        RewardModelConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="max_length must be an integer >= 1"):
        RewardModelConfig(max_length=0)
    args = RewardModelConfig(output_dir="somewhere").reward_config()
    assert args.use_cpu and not args.bf16 and not args.activation_checkpointing and args.max_length == 128


def test_reward_trainer_learns_to_rank_held_out_pairs(tmp_path):
    """Chosen completions say " good", rejected ones " bad": a few seconds of training rank held-out pairs."""
    pairs = make_pairs(48)
    checkpoint = save_checkpoint(tmp_path / "reference")  # a causal LM: the reward head is new
    config = RewardModelConfig(
        output_dir=str(tmp_path / "reward-model"), learning_rate=3e-3, num_train_epochs=3, per_device_train_batch_size=8
    )
    result = train_reward_model(checkpoint, pairs.select(range(32)), pairs.select(range(32, 48)), config)
    assert result.accuracy.value > 0.8
    assert result.eval_pairs == 16 and result.train_pairs == 32 and result.train_seconds > 0
    assert "train_loss" in result.log_history[-1]
    saved = AutoModelForSequenceClassification.from_pretrained(result.path)
    assert saved.config.num_labels == 1 and saved.config.pad_token_id == 0
    assert (result.path / "tokenizer.json").is_file()
