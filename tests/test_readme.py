"""The README's Python example runs exactly as written (real model and data)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch):
    example = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 4
    summary = trainer.state.log_history[-1]  # TRL folds the step metrics into the closing log entry
    assert summary["kl/chosen"] >= 0 and summary["kl/rejected"] >= 0
