"""Outputs that appear whole or not at all: files written under a temporary name then renamed, folders staged.

A rename within one filesystem is atomic, so a crash or a kill at any moment leaves either the previous complete
output or the new complete one, plus at most a hidden temporary that no reader mistakes for an output. Every
whole-or-nothing write of the plugin goes through `atomic_file` (one file) or `staged_folder` (a folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_file(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(temporary_path)`, then rename it onto `path`: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # the permissions `open(path, "w")` would give, not mkstemp's 0600
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_json(path: Path, payload: dict) -> None:
    """`payload` as indented JSON at `path`, written atomically."""

    def write(temporary: str) -> None:
        with open(temporary, "w") as file:
            json.dump(payload, file, indent=2)

    atomic_file(Path(path), write)


def staging_path(target: Path) -> Path:
    """The hidden sibling a folder's contents are written to before `publish_folder` moves them onto `target`.

    Its name is fixed by `target`, so every process of a distributed run writes to the same one.
    """
    target = Path(target)
    return target.parent / f".staging-{target.name}"


@contextlib.contextmanager
def staged_folder(
    target: Path,
    *,
    publish: bool = True,
    main_process: bool = True,
    barrier: Callable[[], None] = lambda: None,
    private: bool = False,
) -> Iterator[Path]:
    """Yield an empty hidden staging folder for `target`; when the block ends without an error, publish it onto
    `target` (`publish_folder`); however it ends, remove what is left of the staging folder.

    A stale staging folder from a killed writer is removed first. In a distributed run every process writes into
    the same folder: pass `main_process` (only it clears and publishes) and `barrier` (all processes wait there
    before and after writing). `publish=False` leaves the publishing to the block. `private`: a staging folder of
    this writer's own, for writers that may race (two processes building the same cache entry); the first to
    finish publishes and the others' work is dropped.
    """
    target = Path(target)
    staging = target.parent / f".staging-{target.name}-{uuid.uuid4().hex}" if private else staging_path(target)
    if main_process:
        remove_staging(staging)
        staging.mkdir(parents=True)
    barrier()
    try:
        yield staging
        barrier()
        if publish and main_process:
            try:
                publish_folder(staging, target)
            except OSError:
                if not (private and target.is_dir()):  # a racing writer published the same folder first
                    raise
    finally:
        if main_process:
            remove_staging(staging)


def publish_folder(staging: Path, target: Path) -> None:
    """Move a completely written `staging` folder onto `target`.

    A `target` that does not exist appears at once (one rename). Into an existing `target` (a run's output folder,
    which also holds checkpoints), each entry is renamed over its namesake, so each file is whole or absent.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return
    for entry in staging.iterdir():
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)
    staging.rmdir()


def remove_staging(staging: Path) -> None:
    """Delete a staging folder left by an interrupted write (nothing happens when there is none)."""
    shutil.rmtree(staging, ignore_errors=True)
