"""Why a local data file does not load, said by file and line: `datasets` reports an empty file as `StopIteration`,
a malformed JSON line as `DatasetGenerationError` and stray bytes as `UnicodeDecodeError`, none naming where."""

from __future__ import annotations

import json
from pathlib import Path


def encoding_problem(path: Path) -> str | None:
    """Where text file `path` stops being UTF-8 (`datasets` reads such bytes and fails later, at the first row it
    decodes), or None. Parquet files are binary and pass."""
    if path.suffix == ".parquet":
        return None
    data = path.read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return f"{path}, line {line}: byte 0x{data[error.start]:02x} is not UTF-8 text; save the file as UTF-8"
    return None


def describe_unreadable(path: Path) -> str | None:
    """What is wrong with data file `path` (empty, not UTF-8, a line or document that is not JSON), or None when a
    scan finds nothing wrong (the reader's own error is then the best there is)."""
    data = path.read_bytes()
    if not data.strip():
        return f"{path} is empty: it holds no rows; expected preference rows with prompt, chosen and rejected"
    if path.suffix == ".parquet":
        return None
    if problem := encoding_problem(path):
        return problem
    text = data.decode("utf-8-sig")
    if path.suffix == ".jsonl" or (path.suffix == ".json" and not text.lstrip().startswith(("[", "{\n"))):
        return _json_lines_problem(path, text)
    if path.suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            return f"{path}, line {error.lineno}, column {error.colno}: not valid JSON ({error.msg})"
    return None


def _json_lines_problem(path: Path, text: str) -> str | None:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            return (
                f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno}); each line of a JSON "
                "Lines file holds one row as a JSON object"
            )
        if not isinstance(row, dict):
            return f"{path}, line {number}: a {type(row).__name__}, not a JSON object with prompt/chosen/rejected"
    return None
