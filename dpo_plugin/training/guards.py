"""Non-finite guards: a NaN or inf loss or gradient stops training (or skips the step), and NaN weights are never
saved."""

from __future__ import annotations

import torch
from transformers.trainer_utils import get_last_checkpoint


class NonFiniteTrainingError(RuntimeError):
    """The loss, the gradients or the weights became NaN or infinite; the message says where and what to do."""


def gradients_are_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient is finite: one sum per tensor, since a single NaN or inf makes its sum non-finite."""
    sums = [p.grad.float().sum() for p in model.parameters() if p.grad is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))


def weights_are_finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point parameter is finite."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point())


def drop_gradients(model: torch.nn.Module) -> None:
    """Set every gradient to None, so the optimizer step leaves the weights as they are (optimizers skip such
    parameters)."""
    for parameter in model.parameters():
        parameter.grad = None


def nonfinite_step_message(what: str, step: int, output_dir: str) -> str:
    """The error for a non-finite `what` at optimizer step `step`, naming the last checkpoint in `output_dir`."""
    checkpoint = get_last_checkpoint(output_dir) if output_dir else None
    resume = f"the last good checkpoint is {checkpoint} (resume_from_checkpoint)" if checkpoint else "no checkpoint"
    return (
        f"Non-finite {what} at optimizer step {step}: training stopped before the weights were updated, and {resume}. "
        "Lower learning_rate or beta, check the batch's data, or set skip_nonfinite_steps: true to skip such steps."
    )
