"""A small, fast experiment for the sweep's tests (`experiment: line_cells:LineCells`, with tests/experiments on the
path): each cell measures a noisy curve y = level + slope · √x at x = `strength` on `prompts` prompts, from its
seed, and logs a "margin" growing as slope · step over 20 steps, or fails as diverged when its seed is
`diverge_seed`. Cells log each run to `output_dir/runs.log`, and `hold_seconds` keeps one running (stoppable by
SIGTERM, as a trainer is) so interruption can be tested."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dpo_plugin.experiments.sweep.grid import CellFailed, CellResult
from dpo_plugin.training.interruption import Interrupted, StopSignals
from dpo_plugin.utils.errors import ConfigError

KEYS = {"level", "slope", "strength", "prompts", "hold_seconds", "diverge_seed", "seed"}


class LineCells:
    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)

    def settings(self, values: dict) -> dict:
        unknown = sorted(set(values) - KEYS)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)} for a line cell.")
        if not isinstance(values.get("strength"), (int, float)) or values["strength"] < 0:
            raise ConfigError(f"strength must be a number >= 0; got {values.get('strength')!r}.")
        return {key: value for key, value in values.items() if key != "hold_seconds"}

    def run(self, values: dict, folder: Path) -> CellResult:
        folder.mkdir(parents=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "runs.log", "a") as log:
            log.write(f"{folder.name}\n")
        with StopSignals() as stop:
            deadline = time.monotonic() + values.get("hold_seconds", 0)
            while time.monotonic() < deadline:
                if stop.received is not None:
                    raise Interrupted(stop.received, folder.name)
                time.sleep(0.02)
        if values.get("diverge_seed") == values["seed"]:
            raise CellFailed("diverged: a non-finite loss at step 2")
        rng = np.random.default_rng(values["seed"])
        prompts = values.get("prompts", 64)
        x = values["strength"] * (1 + 0.1 * rng.standard_normal(prompts))
        noise = 0.05 * rng.standard_normal(prompts)
        y = values.get("level", 0.5) + values.get("slope", 0.1) * np.sqrt(np.abs(x)) + noise
        start = 0.5 + 0.05 * np.random.default_rng(0).standard_normal(prompts)
        margin = values.get("slope", 0.1) * np.arange(1, 21) * (1 + 0.1 * rng.standard_normal(20))
        return CellResult(
            metrics={"x": float(x.mean()), "y": float(y.mean()), "steps": 3},
            per_prompt={"x": x.tolist(), "y": y.tolist()},
            start_per_prompt={"x": [0.0] * prompts, "y": start.tolist()},
            seconds={"run": values.get("hold_seconds", 0)},
            details={
                "curves": {"margin": [[step, float(value)] for step, value in enumerate(margin, 1)]},
                "probes": [
                    {"step": step, "x": float(x.mean()) * step / 2, "y": 0.5 + (y.mean() - 0.5) * step / 2}
                    for step in (0, 1, 2)
                ],
            },
        )
