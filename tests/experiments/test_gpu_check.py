"""`make gpu-check`: its dry run (the same code on CPU at tiny shapes) writes the report every phase fills, and the
time budget and missing packages are said, not crashed on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_plugin.data.assets import cache_dir
from dpo_plugin.experiments import gpu_check

REPO = Path(__file__).parents[2]


def dry_check(tmp_path, minutes: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    env = os.environ | {"GPU_CHECK_DRY": "1", "GPU_CHECK_MINUTES": minutes}
    command = [sys.executable, "-m", "dpo_plugin.experiments.gpu_check", "check", "--output", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads((tmp_path / "gpu_check.json").read_text()), (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_dry_run_fills_every_phase_whose_model_is_here(tmp_path):
    _, report, markdown = dry_check(tmp_path, "8")
    assert report["dry_run"] and report["versions"]["trl"] and report["weights"].startswith("tiny random")
    assert [phase["name"] for phase in report["phases"]] == [phase.name for phase in gpu_check.PHASES]
    for phase in report["phases"]:
        model = next(p.model for p in gpu_check.PHASES if p.name == phase["name"])
        if not (cache_dir() / model).is_dir():
            assert phase["status"].startswith(f"skipped: {model} is not among the assets"), phase
            continue
        assert phase["status"] == "ok", phase.get("output_tail")
        assert phase["results"] and len(phase["table"]) >= 3  # the benchmark's JSON, and a header, rule and row
        assert "\n".join(phase["table"]) in markdown
    assert "## speed-quickstart: ok" in markdown


def test_phases_that_do_not_fit_the_budget_are_skipped_and_said(tmp_path):
    done, report, markdown = dry_check(tmp_path, "0")
    statuses = {phase["status"] for phase in report["phases"]}
    assert all(status.startswith("skipped: ") for status in statuses), statuses
    assert "skipped: 0 s of the budget left" in statuses
    assert "## speed-quickstart: skipped: " in markdown and "skipped" in done.stdout


def test_a_missing_package_without_carried_wheels_is_one_line_saying_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "IMPORT_NAMES", {"no-such-package": "no_such_package_xyz"})
    monkeypatch.setattr(gpu_check, "BUNDLE", tmp_path / ".gpu")
    assert gpu_check.run_check(tmp_path / "out", dry=True, minutes=1) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "no-such-package not installed" in error and "make gpu-bundle" in error
    assert not (tmp_path / "out").exists()
