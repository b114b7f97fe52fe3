"""Non-finite guard: a NaN loss stops training naming the step and the last checkpoint, or skips the step when the
recipe opts in; NaN weights are never saved."""

from pathlib import Path

import pytest
import torch
from conftest import make_model, tiny_args

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.training.guards import NonFiniteTrainingError, gradients_are_finite, weights_are_finite


def poison_forward(model, calls: set[int]):
    """Make the model's output NaN on the given forward calls (1-based), as an overflow would."""
    count = {"n": 0}

    def hook(module, args, output):
        count["n"] += 1
        if count["n"] in calls:
            output.logits = output.logits * float("nan")
        return output

    model.register_forward_hook(hook)


def trainer_with_nan(tokenizer, pairs, tmp_path, calls, **overrides):
    settings = dict(save_strategy="steps", save_steps=2) | overrides
    args = tiny_args(PreferenceConfig, tmp_path, **settings)
    trainer = PreferenceTrainer(
        model=make_model(len(tokenizer)), args=args, train_dataset=pairs, processing_class=tokenizer
    )
    poison_forward(trainer.model, calls)  # the policy only: one forward per step
    return trainer


def test_a_nan_loss_stops_training_naming_the_step_and_the_last_checkpoint(tokenizer, pairs, tmp_path):
    trainer = trainer_with_nan(tokenizer, pairs, tmp_path, calls={3})
    with pytest.raises(NonFiniteTrainingError, match=r"loss at optimizer step 3.*checkpoint-2"):
        trainer.train()
    assert weights_are_finite(trainer.model)
    assert sorted(path.name for path in Path(tmp_path).glob("checkpoint-*")) == ["checkpoint-2"]


def test_skipping_leaves_the_weights_of_the_bad_step_untouched(tokenizer, pairs, tmp_path):
    trainer = trainer_with_nan(tokenizer, pairs, tmp_path, calls={3}, skip_nonfinite_steps=True, save_strategy="no")
    weights = {}

    original_step = trainer.training_step

    def recording_step(model, inputs, num_items_in_batch=None):
        weights[trainer.state.global_step] = [p.detach().clone() for p in model.parameters()]
        return original_step(model, inputs, num_items_in_batch)

    trainer.training_step = recording_step
    trainer.train()
    assert trainer.state.global_step == 6 and weights_are_finite(trainer.model)
    assert all(torch.equal(a, b) for a, b in zip(weights[2], weights[3], strict=True))  # step 3 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(weights[3], weights[4], strict=True))  # step 4 trained
    assert any(entry.get("nonfinite_skipped") for entry in trainer.state.log_history)


def test_nan_weights_are_never_saved(tokenizer, pairs, tmp_path):
    trainer = PreferenceTrainer(
        model=make_model(len(tokenizer)),
        args=tiny_args(PreferenceConfig, tmp_path / "out"),
        train_dataset=pairs,
        processing_class=tokenizer,
    )
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = float("inf")
    with pytest.raises(NonFiniteTrainingError, match="not saving"):
        trainer.save_model(str(tmp_path / "saved"))
    assert not (tmp_path / "saved").exists()


def test_gradient_check():
    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    assert gradients_are_finite(model)
    model.weight.grad[0, 0] = float("nan")
    assert not gradients_are_finite(model)
