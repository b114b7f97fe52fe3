"""The wheel as a user installs it: built from this checkout, installed into a scratch virtualenv, it trains through
a shipped accelerate config, registers both environments, and keeps working after PyPI's `envs` package is installed
beside it (that package owns the top-level name `envs`, so the environments install as `dpo_plugin_envs`)."""

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import make_pairs, save_checkpoint, tiny_run, write_splits

REPO = Path(__file__).resolve().parents[1]
MAKE_BOTH_ENVS = (
    "import gymnasium\n"
    "pairs = [{'prompt': 'p', 'chosen': 'a', 'rejected': 'b'}]\n"
    "gymnasium.make('dpo_plugin/PreferencePairs-v0', dataset=pairs).reset(seed=0)\n"
    "gymnasium.make('dpo_plugin/Completion-v0', dataset=pairs, reward_fn=lambda p, c: [1.0] * len(c)).reset(seed=0)\n"
    "import dpo_plugin, dpo_plugin_envs\n"
    "print(dpo_plugin.__file__, dpo_plugin_envs.__file__)\n"
)


def run(command: list[str], cwd: Path, **kwargs) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(dist),
            str(REPO),
        ],
        dist,
    )
    (wheel,) = dist.glob("dpo_plugin-*.whl")
    return wheel


def test_the_wheel_holds_the_packages_under_unique_names_and_the_accelerate_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"dpo_plugin", "dpo_plugin_envs", "dpo_plugin_envs.pth", "dpo_plugin_envs_autoregister.py"}
    for config in ("ddp", "fsdp", "zero2", "zero3"):
        assert f"dpo_plugin/training/accelerate/{config}.yaml" in names


@pytest.mark.slow  # two short trainings under `accelerate launch` and a pip install from PyPI
def test_installed_wheel_trains_and_makes_both_envs_beside_pypi_envs(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    # The scratch venv reuses this environment's dependencies (torch, TRL, ...) rather than downloading them again:
    # a .pth line appends their folder to sys.path, after the venv's own site-packages, where the wheel goes.
    scratch_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path))
    (Path(scratch_site.as_posix().strip()) / "shared_dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], tmp_path)

    checkpoint = save_checkpoint(tmp_path / "tiny-model")
    data = write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(4))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    for attempt in ("alone", "beside PyPI's envs"):
        located = run([str(python), "-c", MAKE_BOTH_ENVS], tmp_path, env=env)
        assert str(REPO) not in located, f"{attempt}: imported the checkout, not the installed wheel: {located}"
        output_dir = tmp_path / f"run-{attempt.split()[0]}"
        train = tiny_run(checkpoint, data, output_dir, "--max_steps", "1", "--heldout_eval_pairs", "4")
        launch = ["--accelerate_config", "ddp", "--num_processes", "1"]
        run([str(venv / "bin" / "dpo-plugin"), *train, *launch], tmp_path, env=env)
        assert "heldout" in json.loads((output_dir / "metrics.json").read_text()), attempt
        if attempt == "alone":
            run([str(python), "-m", "pip", "install", "--quiet", "envs==1.4"], tmp_path)
    pypi_envs = run([str(python), "-c", "import envs; print(envs.__file__)"], tmp_path, env=env)
    assert str(venv) in pypi_envs  # PyPI's package owns `envs` and still imports
