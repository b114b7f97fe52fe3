"""Divergence guards: a NaN or inf loss or gradient stops training (or skips the step), weights that become NaN, inf
or explode stop it before they are saved, and a checkpoint is called good only once its weights are known good.

Known good: the weights after step k produced a finite loss and finite gradients at step k + 1. The weights after
the last step before a failure are not known good (they gave the non-finite values, or were never run).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..utils.errors import NonFiniteTrainingError


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


def checkpoint_steps(output_dir: str | None) -> list[int]:
    """The steps of the complete `checkpoint-<step>` folders in `output_dir`, oldest first."""
    folder = Path(output_dir) if output_dir else None
    if folder is None or not folder.is_dir():
        return []
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    names = [path.name for path in folder.iterdir() if path.is_dir() and path.name.startswith(prefix)]
    return sorted(int(name[len(prefix) :]) for name in names if name[len(prefix) :].isdigit())


class DivergenceGuard(TrainerCallback):
    """After every optimizer step, checks the trainable weights: each tensor's largest magnitude must be finite and
    at most `max_growth` × max(its largest magnitude when training began, 1) (`max_growth` 0: finite only). One
    reduction per trainable tensor and one synchronisation per step.

    It records the last step whose weights are known good (`verified_step`), which `last_good_checkpoint` and every
    error message use, and refuses weights that failed the check (`check_weights`) at save time.
    """

    def __init__(self, max_growth: float):
        self.max_growth = max_growth
        self.verified_step: int | None = None
        self.step_was_skipped = False
        self._bounds: torch.Tensor | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.verified_step, self.step_was_skipped = None, False
        magnitudes = self._magnitudes(model)
        if magnitudes is not None:
            self._bounds = self.max_growth * magnitudes.clamp(min=1.0) if self.max_growth > 0 else None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.step_was_skipped:
            self.verified_step = state.global_step - 1  # the weights it started from gave finite values
        self.step_was_skipped = False
        self.check_weights(model, state.global_step, args.output_dir, "after the optimizer step")

    def check_weights(self, model, step: int, output_dir: str, when: str) -> None:
        """`NonFiniteTrainingError` when a trainable weight tensor is NaN, infinite or past its bound."""
        magnitudes = self._magnitudes(model)
        if magnitudes is None:
            return
        bad = ~torch.isfinite(magnitudes)
        if self._bounds is not None:
            bad |= ~(magnitudes <= self._bounds.to(magnitudes.device))
        if not bool(bad.any()):
            return
        index = int(bad.nonzero()[0])
        name = _trainable(model)[index][0]
        value = magnitudes[index].item()
        kind = "not finite" if not torch.isfinite(magnitudes[index]) else f"exploded to |w| = {value:.3g}"
        raise NonFiniteTrainingError(
            f"The weights {when} at step {step} are {kind} ({name}; the limit is max_weight_growth = "
            f"{self.max_growth:g} times their starting size): not saving them, and training stopped. "
            f"{self.good_checkpoints(output_dir)} Lower learning_rate, or check the data."
        )

    def last_good_checkpoint(self, output_dir: str | None) -> str | None:
        """The newest checkpoint whose weights are known good, or None."""
        verified = self.verified_step if self.verified_step is not None else -1
        good = [step for step in checkpoint_steps(output_dir) if step <= verified]
        return str(Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{good[-1]}") if good else None

    def good_checkpoints(self, output_dir: str | None) -> str:
        """A sentence naming the last checkpoint known good, and the newer one that is not, if any."""
        steps = checkpoint_steps(output_dir)
        good = self.last_good_checkpoint(output_dir)
        newest = str(Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{steps[-1]}") if steps else None
        resume = f"the last checkpoint known good is {good} (resume_from_checkpoint)" if good else "no checkpoint is"
        resume += "" if good else " known good"
        if newest is not None and newest != good:
            return f"{newest} holds weights not known good; {resume}."
        return resume[0].upper() + resume[1:] + "."

    @staticmethod
    def _magnitudes(model) -> torch.Tensor | None:
        """max |w| of each trainable floating-point tensor, float32, (number of tensors,)."""
        trainable = _trainable(model) if model is not None else []
        if not trainable:
            return None
        return torch.stack([tensor.detach().abs().amax().float() for _, tensor in trainable])


def _trainable(model) -> list[tuple[str, torch.Tensor]]:
    """The trainable floating-point tensors this process holds: DeepSpeed ZeRO-3 keeps a parameter's local shard in
    `ds_tensor` (the parameter itself is empty there); shards a process holds none of are left out."""
    tensors = []
    for name, parameter in model.named_parameters():
        tensor = getattr(parameter, "ds_tensor", parameter)
        if parameter.requires_grad and parameter.is_floating_point() and tensor.numel() > 0:
            tensors.append((name, tensor))
    return tensors


def nonfinite_step_message(what: str, step: int, good_checkpoints: str) -> str:
    """The error for a non-finite `what` at optimizer step `step`; `good_checkpoints` says which checkpoints are."""
    return (
        f"Non-finite {what} at optimizer step {step}: training stopped before the weights were updated. "
        f"{good_checkpoints} Lower learning_rate or beta, check the batch's data, or set skip_nonfinite_steps: true "
        "to skip such steps."
    )
