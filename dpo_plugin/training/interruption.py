"""Stop on SIGTERM or SIGINT at the end of the current optimizer step, with a checkpoint to resume from; or, outside
a trainer, at the end of the current unit of work (`StopSignals`)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

import torch
from transformers import TrainerCallback

logger = logging.getLogger("dpo_plugin")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """A run stopped by SIGTERM or SIGINT (`signal_number`), its trainer having kept what it had; raised to whatever
    runs the run (a comparison, a sweep), which stops too and exits with 128 + the signal number."""

    def __init__(self, signal_number: int, what: str):
        super().__init__(f"{signal.Signals(signal_number).name} stopped {what}")
        self.signal_number, self.what = signal_number, what


class CheckpointOnInterrupt(TrainerCallback):
    """On SIGTERM or SIGINT, let the optimizer step in progress finish, save a checkpoint, and stop training.

    `received` is the signal number once one arrived, `stopped_by` the same once training stopped for it (None
    before; a signal after the last step stops nothing). Repeated SIGTERMs change nothing (schedulers send
    SIGKILL when their grace period ends); in a single-process run a second SIGINT (Ctrl-C twice) raises
    `KeyboardInterrupt` at once. In a distributed run every process stops at the same step: the processes agree on
    whether any of them was signalled after each step (one tiny all-gather).
    """

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.received: int | None = None
        self.stopped_by: int | None = None
        self._previous_handlers: dict[int, object] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.received = self.stopped_by = None
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; there is nothing to install here
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_process_received():
            self.stopped_by = self.received
            name = signal.Signals(self.received).name
            logger.warning("%s received: saving a checkpoint at step %d and stopping.", name, state.global_step)
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_handlers()

    def restore_handlers(self) -> None:
        """Put back the handlers that were installed before training (idempotent)."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            logger.warning(
                "%s received: finishing this optimizer step, then saving a checkpoint and stopping%s.",
                signal.Signals(signum).name,
                " (Ctrl-C again to abort at once)" if self._can_abort(signum) else "",
            )
        elif self._can_abort(signum):
            self.restore_handlers()
            raise KeyboardInterrupt

    def _can_abort(self, signum: int) -> bool:
        """A second SIGINT aborts only a single-process run: distributed launchers relay the user's Ctrl-C, so there
        a worker may see the same Ctrl-C twice."""
        return signum == signal.SIGINT and self.accelerator.num_processes == 1

    def _any_process_received(self) -> bool:
        if self.accelerator.num_processes == 1:
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else self.received], device=self.accelerator.device)
        received = self.accelerator.gather(flag)
        if self.received is None and received.max() > 0:
            self.received = int(received.max())
        return bool(received.max() > 0)


class StopSignals(contextlib.AbstractContextManager):
    """While in the block, SIGTERM and SIGINT are recorded in `received` (the first one's number) instead of
    stopping the process, for the code inside to finish its unit of work and stop; a second SIGINT aborts at once
    (`KeyboardInterrupt`). Outside the main thread, where Python delivers no signals, it installs nothing."""

    def __init__(self):
        self.received: int | None = None
        self._previous_handlers: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous_handlers = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            logger.warning("%s received: finishing this unit of work, then stopping.", signal.Signals(signum).name)
        elif signum == signal.SIGINT:
            self.__exit__()
            raise KeyboardInterrupt
