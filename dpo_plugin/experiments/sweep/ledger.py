"""The ledger: one small JSON per finished cell, `<ledger_dir>/cells/<cell id>.json`, meant to be committed.

A cell's JSON holds its `arm`, `setting`, `seed` and complete `settings` (what `CellRunner.settings` says its result
depends on), its `metrics`, `per_prompt` values, `start_per_prompt`, wall `seconds` per phase, `details`, the
library `versions`, the git `commit` it ran at and when it `finished`. Written atomically, and only once the cell has
finished: a file that exists is a finished cell. A cell is finished for a sweep when its file exists with the same
settings; a file with other settings is stale (a changed recipe or grid) and its cell runs again, replacing it.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from ...utils.atomic import write_json
from ...utils.errors import UserError
from .grid import Cell, CellResult

LIBRARIES = ("dpo_plugin", "torch", "transformers", "trl", "peft", "accelerate", "gymnasium", "bitsandbytes")
DIGITS = 5  # significant digits kept of each per-prompt value: the files stay small and diffable


class Ledger:
    def __init__(self, folder: Path):
        self.folder = Path(folder) / "cells"

    def path(self, cell: Cell) -> Path:
        return self.folder / f"{cell.id}.json"

    def read(self, cell: Cell) -> dict | None:
        """The cell's recorded JSON, or None when it has none; an unreadable file is one `UserError` naming it."""
        path = self.path(cell)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{path} is not a cell record ({error}); delete it to run that cell again.") from error
        if not isinstance(record, dict) or "settings" not in record:
            raise UserError(f"{path} is not a cell record (no settings); delete it to run that cell again.")
        return record

    def finished(self, cell: Cell, settings: dict) -> dict | None:
        """The cell's record if it finished with exactly these settings."""
        record = self.read(cell)
        return record if record is not None and record["settings"] == _as_json(settings) else None

    def record(self, cell: Cell, settings: dict, result: CellResult) -> dict:
        """Write the finished cell's JSON (atomically) and return it."""
        record = {
            "cell": cell.id,
            "arm": cell.arm,
            "setting": cell.setting,
            "seed": cell.seed,
            "settings": _as_json(settings),
            **_rounded(asdict(result)),
            "versions": library_versions(),
            "commit": git_commit(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(self.path(cell), record)
        return record


def _as_json(value):
    """`value` as it reads back from JSON (tuples become lists), so stored and new settings compare equal."""
    return json.loads(json.dumps(value))


def _rounded(value):
    """Floats to `DIGITS` significant digits, all the way down."""
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """The commit checked out where the sweep runs, `+changes` if the package, environments or recipes differ from
    it; "unknown" outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "dpo_plugin", "envs", "recipes"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.strip() + ("+changes" if changes.strip() else "")
