"""Checkpoints and final saves that are whole or absent, never half-written, and never hold NaN weights.

`StagedCheckpoints` is a mixin for a transformers `Trainer` (here TRL's `DPOTrainer`): every file of a checkpoint
is written into a hidden staging folder (`utils.atomic.staged_folder`) and the folder is renamed into place once
complete; the final model's files are staged and each renamed into the output folder. It also saves and restores
the state TRL keeps outside `TrainerState` (its `num_tokens` count), so a resumed run logs what an uninterrupted
one does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from ..data.model_folders import check_model_folder
from ..utils.atomic import atomic_file, publish_folder, staged_folder
from ..utils.errors import NonFiniteTrainingError, UserError
from .guards import weights_are_finite
from .run_identity import run_identity

logger = logging.getLogger("dpo_plugin")

# Trainer state that TRL keeps outside `TrainerState`, saved in each checkpoint so a resumed run logs the same metrics.
PLUGIN_STATE_NAME = "dpo_plugin_state.json"
# Besides the weights and `trainer_state.json`, what a checkpoint needs for a resume that continues exactly: the file
# named in errors -> (glob patterns, any of which holds it; what resuming without it loses). DeepSpeed keeps the
# optimizer's state in `global_step<N>/` instead of `optimizer.pt`.
EXACT_RESUME_FILES = {
    "optimizer.pt": (("optimizer.pt", "global_step*/*optim_states.pt"), "the optimizer's state (AdamW's moments)"),
    "scheduler.pt": (("scheduler.pt",), "the learning-rate schedule's position"),
    "rng_state.pth": (("rng_state*.pth",), "the random number generators' states (dropout and data order differ)"),
    PLUGIN_STATE_NAME: ((PLUGIN_STATE_NAME,), "the num_tokens count TRL logs"),
}


def checkpoint_run(checkpoint: str) -> dict:
    """A checkpoint's step (`global_step`) and what defines the run that saved it (`run`; None in checkpoints from
    before runs recorded it); `UserError` naming a file that cannot be read."""
    folder = Path(checkpoint)
    try:
        step = json.loads((folder / "trainer_state.json").read_text())["global_step"]
        plugin_state = folder / PLUGIN_STATE_NAME
        run = json.loads(plugin_state.read_text()).get("run") if plugin_state.is_file() else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(
            f"{folder} cannot be resumed: its trainer_state.json or {PLUGIN_STATE_NAME} is unreadable ({error}); "
            "resume from an earlier checkpoint."
        ) from error
    return {"global_step": step, "run": run}


def resume_checkpoint(value: str | None, output_dir: str, allow_partial: bool = False) -> str | None:
    """The checkpoint folder `resume_from_checkpoint` names (`true`/`last`: the newest complete one in `output_dir`),
    checked to resume exactly: `UserError` when it is missing, is not a checkpoint, has incomplete weights, or lacks a
    file of `EXACT_RESUME_FILES` (with `allow_partial`, a warning naming what starts afresh)."""
    if value is None or value is False or value == "false":
        return None
    if value is True or str(value).lower() in ("true", "last"):
        checkpoint = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if checkpoint is None:
            raise UserError(
                f"resume_from_checkpoint: {value} found no checkpoint-<step> folder in {output_dir}: pass a "
                "checkpoint folder, or drop the key to start afresh."
            )
    else:
        checkpoint = str(value)
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise UserError(
            f"resume_from_checkpoint {checkpoint!r}: no such folder (relative paths start at {Path.cwd()})."
        )
    if not (folder / "trainer_state.json").is_file():
        raise UserError(
            f"resume_from_checkpoint {checkpoint!r} is not a checkpoint (no trainer_state.json): give one of the "
            f"checkpoint-<step> folders in {output_dir}, or `last`."
        )
    check_model_folder(folder, "resume_from_checkpoint")
    missing = [
        (name, loses)
        for name, (patterns, loses) in EXACT_RESUME_FILES.items()
        if not any(list(folder.glob(pattern)) for pattern in patterns)
    ]
    if missing and not allow_partial:
        name, loses = missing[0]
        raise UserError(
            f"resume_from_checkpoint {checkpoint!r} lacks {name}, so resuming would lose {loses}: resume from a "
            "complete checkpoint, or set allow_partial_resume: true to resume from this one anyway."
        )
    for name, loses in missing:
        logger.warning("Resuming from %s without %s (allow_partial_resume): %s starts afresh.", checkpoint, name, loses)
    return checkpoint


class DiskFullError(UserError):
    """A save that ran out of disk space; its partial files are removed and the message names what is kept."""


@contextlib.contextmanager
def _out_of_space_named(folder: Path, what: str, run_dir: Path):
    """Turns a write into `folder` that ran out of space (`_is_out_of_space`) into one `DiskFullError` naming `what`
    was not written and the newest complete checkpoint in `run_dir`, the one to resume from once space is freed."""
    try:
        yield
    except Exception as error:
        if not _is_out_of_space(error):
            raise
        last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
        kept = f"the last complete checkpoint is {last}" if last else "no checkpoint was saved before it"
        raise DiskFullError(
            f"The disk is full: {what} could not be written to {folder} (its partial files are removed); {kept}."
            " Free space, then run the same command with --resume_from_checkpoint last."
        ) from error


def _is_out_of_space(error: BaseException | None) -> bool:
    """Whether `error`, or an error it came from, is a write that found no space: ENOSPC or EDQUOT, or torch's stream
    writer's "file write failed" (the `RuntimeError` `torch.save` raises for it)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, RuntimeError) and "file write failed" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


class StagedCheckpoints:
    """Mixin: `save_model` and `_save_checkpoint` through staging folders; `num_tokens` restored on resume."""

    _staging_run_dir: str | None = None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """TRL's save, staged: the files are written to a hidden folder beside `output_dir`, then each is renamed into
        place, so none is ever half-written. Refused (`NonFiniteTrainingError`, nothing written) when a weight is NaN
        or infinite. Checkpoints (`_internal_call`) are staged whole by `_save_checkpoint`."""
        output_dir = output_dir or self.args.output_dir
        policy = self.accelerator.unwrap_model(self.model)
        if getattr(self, "divergence_guard", None) is not None:
            self.divergence_guard.check_weights(policy, self.state.global_step, self.args.output_dir, "to be saved")
        if not weights_are_finite(policy):
            raise NonFiniteTrainingError(
                f"The policy has NaN or infinite weights at step {self.state.global_step}: not saving them to "
                f"{output_dir}. Resume from the last good checkpoint, lowering learning_rate."
            )
        if _internal_call:
            super().save_model(output_dir, _internal_call)
            return
        out_of_space = _out_of_space_named(Path(output_dir), "the final model", Path(self.args.output_dir))
        with out_of_space, self._staged(Path(output_dir)) as staging:
            super().save_model(str(staging))

    def _save_checkpoint(self, model, trial) -> None:
        """TRL's checkpoint (model, optimizer, scheduler, RNG, trainer state), written whole to a hidden staging
        folder, then renamed to `checkpoint-<step>` in one step: a kill at any moment leaves only complete checkpoints.

        Rotation (`save_total_limit`) and the best-checkpoint bookkeeping run once the checkpoint is in place.
        """
        run_dir = Path(self._get_output_dir(trial))
        checkpoint = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        out_of_space = _out_of_space_named(run_dir, checkpoint.name, run_dir)
        with out_of_space, self._staged(checkpoint, publish=False) as staging:
            self._staging_run_dir = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_run_dir = None
            staged = staging / checkpoint.name
            if self.args.should_save:
                self._record_best_checkpoint(run_dir, staged)
                plugin_state = {"total_train_tokens": self._total_train_tokens, "run": run_identity(self)}
                atomic_file(staged / PLUGIN_STATE_NAME, lambda path: Path(path).write_text(json.dumps(plugin_state)))
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                publish_folder(staged, checkpoint)
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def _staged(self, target: Path, publish: bool = True):
        """`staged_folder(target)` for all processes: each writes, the main process clears and publishes."""
        return staged_folder(
            target,
            publish=publish,
            main_process=self.accelerator.is_main_process,
            barrier=self.accelerator.wait_for_everyone,
        )

    def _get_output_dir(self, trial) -> str:
        """The run folder, or while a checkpoint is being written, its staging folder."""
        return self._staging_run_dir or super()._get_output_dir(trial)

    def _record_best_checkpoint(self, run_dir: Path, staged: Path) -> None:
        """Point `best_model_checkpoint` at the published folder of the best step (Transformers looked for it in the
        staging folder), and rewrite the staged trainer state with it."""
        if not self.state.best_global_step:
            return
        best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
        if best.exists() or best.name == staged.name:
            self.state.best_model_checkpoint = str(best)
            self.state.save_to_json(str(staged / "trainer_state.json"))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Transformers' restore, plus the state TRL keeps outside `TrainerState` (the `num_tokens` count)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint and os.path.isfile(os.path.join(checkpoint, PLUGIN_STATE_NAME)):
            with open(os.path.join(checkpoint, PLUGIN_STATE_NAME)) as file:
                self._total_train_tokens = json.load(file)["total_train_tokens"]
