"""Divergence guard: a NaN loss stops training naming the step and only checkpoints known good, or skips the step
(left out of the logged means) when the recipe opts in; NaN or exploded weights stop training and are never saved."""

from pathlib import Path

import pytest
import torch
from helpers import make_model, tiny_args

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.training.guards import gradients_are_finite, weights_are_finite
from dpo_plugin.utils.errors import NonFiniteTrainingError


def poison_steps(trainer, steps: set[int]):
    """Make the policy's hidden states NaN, as an overflow would, in the forward passes of the given optimizer
    steps (1-based); passes without gradients (the reference, checks) are left alone."""

    def hook(module, args, output):
        if torch.is_grad_enabled() and trainer.state.global_step + 1 in steps:
            output.last_hidden_state = output.last_hidden_state * float("nan")
        return output

    trainer.model.get_decoder().register_forward_hook(hook)


def trainer_with_nan(tokenizer, pairs, tmp_path, calls, **overrides):
    settings = dict(save_strategy="steps", save_steps=2) | overrides
    args = tiny_args(PreferenceConfig, tmp_path, **settings)
    trainer = PreferenceTrainer(
        model=make_model(len(tokenizer)), args=args, train_dataset=pairs, processing_class=tokenizer
    )
    poison_steps(trainer, calls)
    return trainer


def test_a_nan_loss_stops_training_and_calls_good_only_checkpoints_known_good(tokenizer, pairs, tmp_path):
    """NaN at step 5: checkpoint-4 holds the weights that gave it (not known good); checkpoint-2's weights gave
    finite values at step 3, so it is."""
    trainer = trainer_with_nan(tokenizer, pairs, tmp_path, calls={5})
    with pytest.raises(NonFiniteTrainingError) as error:
        trainer.train()
    message = str(error.value)
    assert "loss at optimizer step 5" in message
    assert f"{tmp_path / 'checkpoint-4'} holds weights not known good" in message
    assert f"the last checkpoint known good is {tmp_path / 'checkpoint-2'}" in message
    assert weights_are_finite(trainer.model)


def test_exploding_weights_stop_training_before_they_are_saved(tokenizer, pairs, tmp_path):
    trainer = trainer_with_nan(tokenizer, pairs, tmp_path, calls=set(), learning_rate=1e30, save_steps=1)
    with pytest.raises(NonFiniteTrainingError, match=r"at step 1 are exploded.*No checkpoint is known good"):
        trainer.train()
    assert not list(Path(tmp_path).glob("checkpoint-*"))
    with pytest.raises(NonFiniteTrainingError, match="not saving them"):
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()


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
    logs = {entry["step"]: entry for entry in trainer.state.log_history if "learning_rate" in entry}
    assert "loss" in logs[2] and "loss" in logs[4] and logs[4]["nonfinite_skipped"] == 1.0
    assert {"loss", "grad_norm", "rewards/margins"}.isdisjoint(logs[3])  # skipped: no loss of 0, no metrics
    assert logs[3]["nonfinite_skipped"] == 1.0
    assert all(torch.isfinite(torch.tensor(value)) for entry in logs.values() for value in entry.values())


def test_a_window_with_a_skipped_step_logs_the_mean_loss_of_the_steps_that_ran(tokenizer, pairs, tmp_path):
    def logs(logging_steps):
        trainer = trainer_with_nan(
            tokenizer, pairs, tmp_path / str(logging_steps), calls={2}, save_strategy="no", skip_nonfinite_steps=True
        )
        trainer.args.logging_steps = logging_steps
        trainer.train()
        return {entry["step"]: entry for entry in trainer.state.log_history if "learning_rate" in entry}

    each_step, windows = logs(1), logs(3)  # the same run, logged every step and every 3 steps
    assert windows[3]["loss"] == pytest.approx((each_step[1]["loss"] + each_step[3]["loss"]) / 2, rel=1e-6)
    assert windows[3]["nonfinite_skipped"] == windows[6]["nonfinite_skipped"] == 1.0


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
