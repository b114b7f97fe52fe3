"""One run per output folder (or output file): an exclusive lock for the life of the run.

The lock is `fcntl.flock` on `<folder>/.dpo-plugin.lock` (`run_folder`) or `<folder>/.<name>.lock` beside an output
file (`run_file`: a benchmark's JSON), a file that says which process holds it (pid, command,
start time). The kernel releases a flock when its process ends however it ends (SIGKILL included), so a lock file
left by a dead process is simply taken over; the file is removed when the run ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

LOCK_FILE = ".dpo-plugin.lock"
# "<pid>:<folder>" while a run holds <folder>: the processes it launches (`accelerate launch`) work under its lock
HELD_BY_PARENT_ENV = "DPO_PLUGIN_RUN_FOLDER_LOCKED"


@contextlib.contextmanager
def run_folder(folder: str | Path) -> Iterator[Path]:
    """`folder` (created if missing) held for this run alone while the block runs: `UserError` naming the holder when
    another live run holds it. A folder the block created and left holding nothing is removed again when the block
    fails (trainers create their output folder before they can fail on a bad setting). Processes launched by a run
    that holds the lock (`HELD_BY_PARENT_ENV`) run under their parent's lock."""
    folder = Path(folder)
    existed = folder.exists()
    holder_pid, _, held = os.environ.get(HELD_BY_PARENT_ENV, "").partition(":")
    if held == str(folder.resolve()) and holder_pid != str(os.getpid()):
        yield folder  # a process the holder launched
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = _acquire(folder / LOCK_FILE, f"{folder} is the output folder", "output_dir")
    held_before = os.environ.get(HELD_BY_PARENT_ENV)
    os.environ[HELD_BY_PARENT_ENV] = f"{os.getpid()}:{folder.resolve()}"
    try:
        yield folder
    except BaseException:
        _release(lock, folder / LOCK_FILE)
        lock = None
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            with contextlib.suppress(OSError):  # another process of the run wrote into it first
                folder.rmdir()
        raise
    finally:
        if held_before is None:
            os.environ.pop(HELD_BY_PARENT_ENV, None)
        else:
            os.environ[HELD_BY_PARENT_ENV] = held_before
        if lock is not None:
            _release(lock, folder / LOCK_FILE)


@contextlib.contextmanager
def run_file(path: str | Path, option: str) -> Iterator[Path]:
    """`path` written by this run alone while the block runs (its folder is created): `UserError` naming the holder
    and `option` (the key that names the file) when another live run writes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    lock = _acquire(lock_path, f"{path} is the output", option)
    try:
        yield path
    finally:
        _release(lock, lock_path)


def _acquire(path: Path, output: str, option: str):
    """The open lock file, locked; `UserError` naming the holder (and `option`, the key that names the `output`) when
    another process holds it. Retried when the file was replaced between opening and locking (its holder removed it
    on release)."""
    while True:
        handle = open(path, "a+")  # noqa: SIM115  (held open for the life of the run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _holder(handle.read())
            handle.close()
            raise UserError(
                f"{output} of a run in progress ({holder}): wait for it to end, or give another {option}."
            ) from None
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # locked a file its holder has just removed: lock the one now in its place
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    handle.write(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv), "started": started}))
    handle.flush()
    return handle


def _release(handle, path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    handle.close()


def _holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']}, started {holder['started']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that is still running"
