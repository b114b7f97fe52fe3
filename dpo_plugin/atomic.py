"""Outputs that appear whole or not at all: files written under a temporary name then renamed, folders staged.

A rename within one filesystem is atomic, so a crash or a kill at any moment leaves either the previous complete
output or the new complete one, plus at most a hidden temporary that no reader mistakes for an output.
"""

import os
import shutil
import tempfile
from collections.abc import Callable
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


def staging_folder(target: Path) -> Path:
    """The hidden sibling a folder's contents are written to before `publish_folder` moves them onto `target`.

    Its name is fixed by `target`, so every process of a distributed run writes to the same one.
    """
    target = Path(target)
    return target.parent / f".staging-{target.name}"


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
