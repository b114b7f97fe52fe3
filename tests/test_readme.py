"""The README's Python examples run exactly as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def readme_example(containing: str) -> str:
    """The README's ```python block that contains `containing`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = [block for block in blocks if containing in block]
    return block


def run_example(containing: str, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_example(containing), "README.md", "exec"), namespace)
    return namespace


@pytest.mark.slow
def test_readme_trainer_example_runs(tmp_path, monkeypatch):
    trainer = run_example("from dpo_plugin import PreferenceConfig, PreferenceTrainer", tmp_path, monkeypatch)[
        "trainer"
    ]
    assert trainer.state.global_step == 4
    summary = trainer.state.log_history[-1]  # TRL folds the step metrics into the closing log entry
    assert summary["kl/chosen"] >= 0 and summary["kl/rejected"] >= 0


@pytest.mark.slow
def test_readme_online_example_runs(tmp_path, monkeypatch):
    trainer = run_example("OnlinePreferenceTrainer(", tmp_path, monkeypatch)["trainer"]
    assert [entry["round"] for entry in trainer.rounds] == [0, 1]
    assert all(entry["reward/mean"] < 0 and entry["pairs"] > 0 for entry in trainer.rounds)
    assert trainer.state.log_history[-1]["train_loss"] > 0 and (tmp_path / "outputs/readme-online/round-1").is_dir()


def test_readme_gymnasium_example_runs(tmp_path, monkeypatch, capsys):
    namespace = run_example("dpo_plugin/PreferencePairs-v0", tmp_path, monkeypatch)
    assert namespace["returns"] == [1.0, 1.0]
    assert capsys.readouterr().out == "preference accuracy 1.00\n"
