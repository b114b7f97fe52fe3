"""Model folders checked before anything loads them: a local path that does not exist, a folder with a config but
no weights, weight files cut short or malformed, and pickled weights that `torch.load(weights_only=True)` refuses are
`UserError`s naming the file, not a hub client's, a parser's or an unpickler's message."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from ..utils.errors import UserError
from .assets import resolve_model

# What `from_pretrained` reads, in the order it looks: a full model, or PEFT adapters (their base is checked apart).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# A Hugging Face Hub id: `name` or `namespace/name`.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def model_folder(name_or_path: str, key: str = "model_name_or_path") -> str:
    """`resolve_model(name_or_path)`, checked: a local folder must hold a loadable model (`check_model_folder`); a
    path that is not a folder is a `UserError` unless it reads as a hub id, which is returned for `from_pretrained`."""
    path = Path(resolve_model(name_or_path)).expanduser()
    if path.is_dir():
        check_model_folder(path, key)
        return str(path)
    if path.exists():
        raise UserError(f"{key} {name_or_path!r} is a file; expected a model folder (config.json and weights).")
    if not HUB_ID.fullmatch(name_or_path):
        raise UserError(
            f"{key} {name_or_path!r}: no such folder (relative paths start at {Path.cwd()}). Give a folder that "
            "save_pretrained wrote, a hub id, or smollm2-135m-instruct (the bundled offline model)."
        )
    return name_or_path


def check_model_folder(folder: Path, key: str = "model_name_or_path") -> None:
    """`UserError` unless `folder` holds a config and complete weights (every shard of a sharded checkpoint; every
    safetensors file as long as its header says), or PEFT adapters with their weights."""
    if (folder / "adapter_config.json").is_file():
        names = ADAPTER_WEIGHT_FILES
    elif (folder / "config.json").is_file():
        names = WEIGHT_FILES
    else:
        raise UserError(
            f"{key} {str(folder)!r} holds no config.json (nor adapter_config.json): it is not a model folder. Give "
            "a folder that save_pretrained wrote."
        )
    present = [folder / name for name in names if (folder / name).is_file()]
    if not present:
        raise UserError(
            f"{key} {str(folder)!r} has a config but no weights: expected one of {', '.join(names)}. Copy the weight "
            "files into it, or save the model again with save_pretrained."
        )
    weights = present[0]
    files = [folder / shard for shard in _shards(weights)] if weights.name.endswith(".index.json") else [weights]
    for file in files:
        if not file.is_file():
            raise UserError(f"{key}: {file} is missing; {weights.name} lists it as a shard of the weights.")
        if file.suffix == ".safetensors" and (problem := _truncation(file)):
            raise UserError(f"{key}: {problem}; copy or save the weights again.")
        if file.suffix == ".bin" and (refused := _refused_pickle(file)):
            raise UserError(
                f"{key}: torch.load(weights_only=True), as from_pretrained loads it, refuses {file} ({refused}): it "
                "is not a plain file of tensors, and loading it otherwise could run code. Save the model again from "
                "a trusted copy (save_pretrained writes safetensors), or give another model."
            )
    if names is WEIGHT_FILES and all(file.suffix == ".safetensors" for file in files):
        _check_shapes(folder, files, key)


def _check_shapes(folder: Path, files: list[Path], key: str) -> None:
    """`UserError` naming the first weight whose shape in the safetensors headers differs from the shape the
    folder's config.json builds (the model built on the meta device: no memory, no weights read)."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    architecture = getattr(transformers, (config.architectures or [""])[0], None)
    if architecture is None or getattr(config, "quantization_config", None):
        return  # a class transformers does not export, or packed quantized weights: left to from_pretrained
    try:
        with torch.device("meta"):
            expected = {name: tuple(tensor.shape) for name, tensor in architecture(config).state_dict().items()}
    except Exception:  # noqa: BLE001  (a model that cannot be built this way is left to from_pretrained)
        return
    for file in files:
        for name, entry in _header(file).items():
            if name in expected and tuple(entry["shape"]) != expected[name]:
                raise UserError(
                    f"{key}: {file} holds {name} of shape {list(entry['shape'])}, but {folder / 'config.json'} "
                    f"builds it as {list(expected[name])}: the config is not the one these weights were saved with. "
                    "Save the model again, or put back its own config.json."
                )


def _header(file: Path) -> dict:
    """A safetensors file's header (checked whole by `_truncation` first), without its metadata."""
    with file.open("rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


def _shards(index: Path) -> list[str]:
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{index} is not a weight index (a JSON object with a weight_map): {error}.") from error


def _truncation(file: Path) -> str | None:
    """How a safetensors file is shorter than its own header says (an 8-byte length, a JSON header, then the data),
    or None."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little") if size >= 8 else None
        if length is None or 8 + length > size:
            return f"{file} is truncated: {size} bytes, too few for its own header"
        try:
            header = json.loads(handle.read(length))
            entries = [entry for name, entry in header.items() if name != "__metadata__"]
            end = max((int(entry["data_offsets"][1]) for entry in entries), default=0)
        except (ValueError, AttributeError, KeyError, TypeError, IndexError):
            return f"{file} is not a safetensors file: its header is not a JSON mapping of tensors with data_offsets"
    if 8 + length + end > size:
        return f"{file} is truncated: {size:,} bytes of the {8 + length + end:,} its header describes"
    return None


def _refused_pickle(file: Path) -> str | None:
    """Why `torch.load(weights_only=True)`, as `from_pretrained` loads a `.bin`, refuses `file` (a global it does not
    allow, or bytes that are no pickle), or None. Read onto the meta device (memory-mapped for torch's zip format):
    no tensor data is read."""
    import pickle

    import torch

    try:
        torch.load(file, map_location="meta", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as error:  # the reason, without torch's advice around it
        text, marker = str(error), "WeightsUnpickler error:"
        reason = text.rpartition(marker)[2] if marker in text else text.partition("\n")[2]
        lines = [line.strip() for line in reason.splitlines() if line.strip() and "documentation" not in line]
        return lines[0].split(". ")[0].rstrip(".") if lines else "not a weights-only pickle"
    return None
