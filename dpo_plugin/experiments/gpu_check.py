"""`make gpu-check`: one prepared check of a lent GPU, at most `GPU_CHECK_MINUTES` (8) minutes, no edit on the day.

    make gpu-bundle                       # here, once (package index and assets): .gpu/, what a bare GPU machine lacks
    make gpu-check GPU_CHECK_OUT=<folder> # there, with .gpu carried beside the checkout
    GPU_CHECK_DRY=1 make gpu-check        # the same code on CPU at tiny shapes, in about a minute (CI runs it)

`.gpu/` holds the wheels of the packages the GPU image lacks (trl, datasets, gymnasium, bitsandbytes and theirs, at
the versions installed here) and `assets.tar.xz`, the assets' small files: the models' configs and tokenizers and the
Pang & Lee data. A machine that cannot reach the internet gets the models' weights drawn at random at their real
shapes (what speed and memory depend on; the report says so, and the reference gaps it measures are then not the
real models'); with the assets cached (`make assets`) the real weights are used.

The check installs what is missing, builds the asset cache, then runs the benchmarks below in priority order, each
`dpo-plugin bench` command in its own process with what is left of the time as its limit; a phase that does not fit
is skipped and said so. It writes `gpu_check.json` (device, versions, each phase's command, status, seconds, table
and the benchmark's own JSON) and `gpu_check.md` (the tables) into the output folder.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / ".gpu"
ASSETS_ARCHIVE = "assets.tar.xz"
# the packages the GPU image lacks (docs/performance.md), carried as wheels at the versions installed here
CARRIED_PACKAGES = ("trl", "datasets", "dill", "multiprocess", "gymnasium", "farama-notifications", "bitsandbytes")
IMPORT_NAMES = {"trl": "trl", "datasets": "datasets", "gymnasium": "gymnasium", "bitsandbytes": "bitsandbytes"}
VERSIONS_REPORTED = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets", "gymnasium")
SMOLLM2, GEMMA3, POLARITY = "SmolLM2-135M-Instruct", "gemma-3-270m", "pang-lee-polarity"
WEIGHTS = "model.safetensors"
MIN_PHASE_SECONDS = 20  # a phase is started only with at least this much of the budget left


@dataclass(frozen=True)
class Phase:
    """One `dpo-plugin bench` command: what it measures, its arguments, the model asset it needs, and its overrides
    for the dry run's tiny shapes."""

    name: str
    measures: str
    argv: tuple[str, ...]
    model: str
    dry: tuple[str, ...]


# the dry run's tiny shapes: training phases, then the sampler's
TRAIN_DRY = ("--max_train_pairs", "8", "--max_length", "48", "--per_device_train_batch_size", "2")
TRAIN_DRY += ("--gradient_accumulation_steps", "1", "--gradient_checkpointing", "false", "--bf16", "false")
SPEED_DRY = (*TRAIN_DRY, "--bench_steps", "1", "--bench_warmup", "0", "--bench_rounds", "1")
MEMORY_DRY = (*TRAIN_DRY, "--bench_steps", "1", "--bench_objectives", "dpo")
SAMPLING_DRY = ("--bench_prompts", "2", "--bench_rounds", "1", "--max_new_tokens", "4", "--bf16", "false")
SAMPLING_DRY += ("--samples_per_prompt", "2", "--sampling_batch_size", "2", "--bench_baseline_batch", "2")
KERNELS_DRY = ("--bench_positions", "16", "--bench_rounds", "1", "--bf16", "false")

PHASES = (
    Phase(
        "speed-quickstart",
        "pairs/s of PreferenceTrainer (dpo, ipo, tdpo2; chunked head) against TRL's DPOTrainer (its fused head) and a "
        "raw PyTorch step: the quickstart recipe, SmolLM2-135M, LoRA, bf16",
        ("bench", "speed", "--config", "recipes/quickstart.yaml", "--bench_steps", "8", "--bench_warmup", "2"),
        SMOLLM2,
        SPEED_DRY,
    ),
    Phase(
        "kernels",
        "the chunked head alone against TRL's chunked kernels (Triton on CUDA), the same log-probs and TDPO KL on the "
        "same tensors: Gemma-3-270M's 262,144 × 640 head, 512 and 4,096 positions, bf16, LoRA (the quickstart's)",
        ("bench", "kernels", "--config", "recipes/quickstart.yaml", "--model_name_or_path", "gemma-3-270m")
        + ("--bench_positions", "512", "4096"),
        GEMMA3,
        KERNELS_DRY,
    ),
    Phase(
        "memory-quickstart",
        "peak CUDA memory per objective: TRL's DPOTrainer, the chunked head, full logits, each in a fresh process",
        ("bench", "memory", "--config", "recipes/quickstart.yaml", "--bench_versus_trl", "true"),
        SMOLLM2,
        MEMORY_DRY,
    ),
    Phase(
        "speed-large-vocab",
        "pairs/s as speed-quickstart, Gemma-3-270M at its 262,144-token vocabulary, 245-token completions",
        ("bench", "speed", "--config", "recipes/bench/large_vocab.yaml", "--max_train_pairs", "64"),
        GEMMA3,
        SPEED_DRY,
    ),
    Phase(
        "memory-large-vocab",
        "peak CUDA memory as memory-quickstart, Gemma-3-270M at its 262,144-token vocabulary",
        ("bench", "memory", "--config", "recipes/bench/large_vocab.yaml", "--bench_versus_trl", "true"),
        GEMMA3,
        MEMORY_DRY,
    ),
    Phase(
        "low-bit-reference",
        "peak memory and log-prob gap of the reference held in float32, int8, mixed (35% of the bytes) and nf4, "
        "beside a full-parameter policy (recipes/dpo_full.yaml)",
        ("bench", "memory", "--config", "recipes/dpo_full.yaml", "--max_train_pairs", "256", "--bench_steps", "4")
        + ("--bench_modes", "none", "int8", "mixed", "nf4", "--bench_ref_budgets", "0.35"),
        SMOLLM2,
        (*MEMORY_DRY, "--bench_ref_budgets", "0.99"),  # a tiny model's embeddings hold nearly all of its bytes
    ),
    Phase(
        "sampling",
        "completion tokens/s of the on-policy rollout against the bare sampler and `generate`",
        ("bench", "sampling", "--config", "recipes/online_dpo.yaml"),
        SMOLLM2,
        SAMPLING_DRY,
    ),
    Phase(
        "speed-quickstart-full-logits",
        "pairs/s as speed-quickstart with the chunked head off (full logits)",
        ("bench", "speed", "--config", "recipes/quickstart.yaml", "--chunked_head", "false")
        + ("--bench_steps", "8", "--bench_warmup", "2"),
        SMOLLM2,
        SPEED_DRY,
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpo_plugin.experiments.gpu_check", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("bundle", help="Write .gpu/: the wheels and asset files a bare GPU machine lacks.")
    check = commands.add_parser("check", help="Run the check; GPU_CHECK_DRY=1: on CPU at tiny shapes.")
    check.add_argument("--output", default="outputs/gpu_check", help="Where gpu_check.json and gpu_check.md go.")
    args = parser.parse_args(argv)
    if args.command == "bundle":
        return bundle()
    dry = os.environ.get("GPU_CHECK_DRY", "") not in ("", "0")
    minutes = float(os.environ.get("GPU_CHECK_MINUTES", "8"))
    return run_check(Path(args.output), dry, minutes)


# ----------------------------------------------------------------------------------------------------------------
# Here: what the GPU machine lacks.


def bundle() -> int:
    """`.gpu/wheels/`: the carried packages' wheels for the GPU machine (CPython 3.12, x86-64 Linux) at the versions
    installed here; `.gpu/assets.tar.xz`: the cached assets' files except model weights."""
    from ..data.assets import cache_dir

    wheels = BUNDLE / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CARRIED_PACKAGES]
    platforms = [f"--platform=manylinux_2_{minor}_x86_64" for minor in (17, 24, 27, 28)] + [
        "--platform=manylinux2014_x86_64"
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version=3.12",
        ]
        + ["--implementation=cp", *platforms, "--dest", str(wheels), *pins],
        check=True,
    )
    source = cache_dir()
    with tarfile.open(BUNDLE / ASSETS_ARCHIVE, "w:xz") as archive:
        for folder in (SMOLLM2, GEMMA3, POLARITY):
            for path in sorted((source / folder).glob("*")):
                if path.name != WEIGHTS:
                    archive.add(path, arcname=f"{folder}/{path.name}")
    size = sum(path.stat().st_size for path in BUNDLE.rglob("*") if path.is_file())
    print(
        f"Wrote {BUNDLE}: {len(pins)} wheels ({', '.join(pins)}) and {ASSETS_ARCHIVE}; {size / 2**20:.0f} MiB in all."
    )
    return 0


# ----------------------------------------------------------------------------------------------------------------
# There: install, build the cache, run the phases, report.


def run_check(output: Path, dry: bool, minutes: float) -> int:
    started = time.monotonic()
    deadline = started + 60 * minutes
    site = install_missing_packages()
    if site is None:
        return 2
    work = Path(tempfile.mkdtemp(prefix="dpo_plugin_gpu_check_"))
    cache, weights = build_cache(work / "cache", dry)
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [site, str(REPO), str(REPO / "envs"), os.environ.get("PYTHONPATH")])
        ),
        "DPO_PLUGIN_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU's, also on a machine with a GPU
    report = {"dry_run": dry, **machine(), "weights": weights, "setup_seconds": round(time.monotonic() - started, 1)}
    report["phases"] = []
    for index, phase in enumerate(PHASES, 1):
        print(f"[{index}/{len(PHASES)}] {phase.name}: {phase.measures}", flush=True)
        result = run_phase(phase, cache, work, env, dry, deadline)
        print(f"    {result['status']}" + (f" in {result['seconds']} s" if "seconds" in result else ""), flush=True)
        report["phases"].append(result)
    report["seconds"] = round(time.monotonic() - started, 1)
    output.mkdir(parents=True, exist_ok=True)
    (output / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (output / "gpu_check.md").write_text(markdown(report))
    shutil.rmtree(work, ignore_errors=True)
    print(f"Wrote {output / 'gpu_check.json'} and {output / 'gpu_check.md'} in {report['seconds']} s.")
    return 0


def install_missing_packages() -> str | None:
    """Install the carried wheels when a package they hold is missing; the folder they went into ("" when nothing
    was missing), or None (with one line saying what to do) when something is missing and no wheels are here."""
    missing = [name for name, module in IMPORT_NAMES.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return ""
    wheels = sorted((BUNDLE / "wheels").glob("*.whl"))
    if not wheels:
        print(
            f"{', '.join(missing)} not installed and {BUNDLE / 'wheels'} has no wheels: run `make gpu-bundle` on a "
            "machine with the package index, and carry .gpu to this one.",
            file=sys.stderr,
        )
        return None
    site = Path(tempfile.gettempdir()) / "dpo_plugin_gpu_site"
    print(f"Installing {len(wheels)} carried wheels ({', '.join(missing)} missing) into {site} ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
        + ["--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)],
        check=True,
    )
    sys.path.insert(0, str(site))
    return str(site)


def build_cache(cache: Path, dry: bool) -> tuple[Path, str]:
    """An asset cache for the phases: the carried `assets.tar.xz` (else this machine's cache) with weights as they
    are where they exist (real run), else drawn at random at the real shapes, or (dry run) tiny models built from
    the real configs; the Pang & Lee data as it is. Returns the cache and what the weights are."""
    from ..data.assets import cache_dir

    source = cache_dir()
    if (BUNDLE / ASSETS_ARCHIVE).is_file():
        source = cache.parent / "carried"
        with tarfile.open(BUNDLE / ASSETS_ARCHIVE) as archive:
            archive.extractall(source, filter="data")
    cache.mkdir(parents=True)
    drawn = []
    for folder in (SMOLLM2, GEMMA3, POLARITY):
        if not (source / folder / ("sentences.csv" if folder == POLARITY else "config.json")).is_file():
            continue
        (cache / folder).mkdir()
        for path in (source / folder).iterdir():  # copies: a model saved below must not write through to the source
            if path.name != WEIGHTS:
                shutil.copy(path, cache / folder / path.name)
        if folder == POLARITY:
            continue
        if dry or not (source / folder / WEIGHTS).is_file():
            random_model(source / folder, cache / folder, tiny=dry)
            drawn.append(folder)
        else:
            (cache / folder / WEIGHTS).symlink_to((source / folder / WEIGHTS).resolve())
    if dry:
        return cache, "tiny random models from the real configs (dry run)"
    if drawn:
        return (
            cache,
            f"random at the real shapes for {', '.join(drawn)} (no weights here): speed and memory as the "
            "real models', reference gaps not",
        )
    return cache, "the real models'"


def random_model(source: Path, target: Path, tiny: bool) -> None:
    """A model with `source`'s config (`tiny`: 2 layers of width 64) and weights drawn at random, saved in `target`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    if tiny:
        text = config.get_text_config()
        sizes = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2}
        sizes |= {"num_key_value_heads": 1, "head_dim": 32}
        for key, value in sizes.items():
            if hasattr(text, key):
                setattr(text, key, value)
        if getattr(text, "layer_types", None):
            text.layer_types = text.layer_types[:2]
    AutoModelForCausalLM.from_config(config).save_pretrained(target)


def run_phase(phase: Phase, cache: Path, work: Path, env: dict, dry: bool, deadline: float) -> dict:
    """Run one phase in its own process group, limited to what is left until `deadline`; its result."""
    result = {"name": phase.name, "measures": phase.measures}
    if not (cache / phase.model / "config.json").is_file():
        return result | {"status": f"skipped: {phase.model} is not among the assets (`dpo-plugin assets` fetches it)"}
    left = deadline - time.monotonic()
    if left < MIN_PHASE_SECONDS:
        return result | {"status": f"skipped: {max(left, 0):.0f} s of the budget left"}
    bench_output = work / f"{phase.name}.json"
    overrides = ("--use_cpu", "true", *phase.dry) if dry else ("--use_cpu", "false")
    argv = [*phase.argv, *overrides, "--bench_output", str(bench_output)]
    result["command"] = "dpo-plugin " + " ".join(argv[:-2])
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "dpo_plugin.cli", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its worker processes too are stopped at the limit
    )
    try:
        output, _ = process.communicate(timeout=left)
        status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        status = f"stopped at the time limit ({left:.0f} s left when it started)"
    result |= {"status": status, "seconds": round(time.monotonic() - started, 1)}
    result["table"] = [line for line in output.splitlines() if line.startswith("|")]
    if bench_output.is_file():
        result["results"] = json.loads(bench_output.read_text())
    if status != "ok":
        result["output_tail"] = output[-3000:]
    return result


def machine() -> dict:
    """The device, the platform and the versions of the libraries the phases use."""
    import torch

    versions = {"python": platform.python_version()}
    for name in VERSIONS_REPORTED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
        "cuda": torch.version.cuda if cuda else None,
        "platform": platform.platform(),
        "versions": versions,
    }


def markdown(report: dict) -> str:
    """The report as Markdown: the machine, then each phase's status and table."""
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items() if version)
    lines = [
        f"# GPU check{' (dry run)' if report['dry_run'] else ''}: {report['device']}",
        "",
        f"{versions}; CUDA {report['cuda']}. Weights: {report['weights']}. Setup {report['setup_seconds']} s, "
        f"in all {report['seconds']} s.",
    ]
    for phase in report["phases"]:
        seconds = f", {phase['seconds']} s" if "seconds" in phase else ""
        lines += ["", f"## {phase['name']}: {phase['status']}{seconds}", "", phase["measures"] + "."]
        if "command" in phase:
            lines += ["", f"`{phase['command']}`"]
        if phase.get("table"):
            lines += ["", *phase["table"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
