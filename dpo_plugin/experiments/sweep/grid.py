"""A sweep's grid file and the cells it expands to.

A grid file (`recipes/experiments/<name>.yaml`) names the experiment whose cells it runs and the grid:

    experiment: comparison           # a name from EXPERIMENTS, or "module:Class"
    base: {config: recipes/compare_online.yaml}   # values every cell shares
    arms:                            # arm name -> its values
      offline-dpo: {method: dpo}
      online-dpo-gold: {method: online-dpo/gold, settings: [{beta: 0.1}]}   # an arm may carry its own settings
    settings: [{beta: 0.1}, {beta: 0.03}]        # each arm is run at each setting...
    seeds: [42, 1, 2]                            # ...with each seed
    report:                          # what the report compares, at the same x
      x: kl
      y: gold
      baseline: offline-dpo          # every other arm against this one
      claims:                        # and named claims, each an arm against another
        - {claim: online DPO above offline DPO, arm: online-dpo-gold, baseline: offline-dpo}
      curve_claims:                  # claims on a training-log curve's growth over the second half (curves.py)
        - {claim: IPO bounded where DPO's margin grows, curve: rewards/margins, arm: ipo, baseline: dpo}

A cell's values are `base`, then its arm's, then its setting's, then `seed`, later ones winning; the experiment turns
them into the cell's settings (everything its result depends on) and runs it. Cells run arm by arm within each seed,
so a partial sweep has whole seeds of every arm.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from ...utils.errors import ConfigError, UserError

# experiment name -> "module:Class" of its cell runner
EXPERIMENTS = {"comparison": "dpo_plugin.experiments.comparison.cells:ComparisonCells"}
GRID_KEYS = ("experiment", "name", "ledger_dir", "output_dir", "base", "arms", "settings", "seeds", "report")
REPORT_KEYS = ("x", "y", "baseline", "claims", "curve_claims")
CLAIM_KEYS = ("claim", "arm", "baseline")
CURVE_CLAIM_KEYS = ("claim", "curve", "arm", "baseline")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class CellResult:
    """What a finished cell records: `metrics` (name -> number), `per_prompt` (metric -> one value per held-out
    prompt, in the same prompt order in every cell, for intervals over prompts), `start_per_prompt` (the same for
    the policy every cell starts from, where the experiment has one), `seconds` (phase -> wall seconds) and
    `details` (anything else small worth keeping, e.g. held-out probes during training); `failed`, the reason, for
    a cell whose run diverged (its metrics then empty)."""

    metrics: dict[str, float]
    per_prompt: dict[str, list[float]] = field(default_factory=dict)
    start_per_prompt: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    failed: str | None = None


class CellFailed(Exception):
    """Raised by a cell whose run diverged (e.g. a non-finite loss or metric): the failure is its result. The sweep
    records the cell as failed, the report counts it in its setting's row (a failed run is counted, not dropped), and
    a rerun does not run it again."""


class CellRunner(Protocol):
    """An experiment's cells. Built once per sweep with the sweep's `output_dir` (where runs may keep what they share,
    e.g. a reward model)."""

    def settings(self, values: dict) -> dict:
        """The complete settings a cell's result depends on, as JSON values; a `ConfigError` naming the key for a
        value the experiment cannot run (checked for every cell before the first one runs)."""

    def run(self, values: dict, folder: Path) -> CellResult:
        """Run one cell, keeping its outputs in `folder`; raise `Interrupted` when SIGTERM/SIGINT stopped it and
        `CellFailed` when its run diverged."""


@dataclass(frozen=True)
class Cell:
    arm: str
    setting: dict
    seed: int
    values: dict

    @property
    def id(self) -> str:
        """`<arm>--<key>-<value>_...--seed<seed>`, e.g. offline-dpo--beta-0.1--seed42: a file name."""
        setting = "_".join(f"{key}-{_short(value)}" for key, value in self.setting.items()) or "default"
        return re.sub(r"[^A-Za-z0-9._+=-]", "-", f"{self.arm}--{setting}--seed{self.seed}")

    @property
    def group(self) -> tuple[str, str]:
        """(arm, setting) as words: the cells that differ only by seed."""
        return self.arm, ", ".join(f"{key} {_short(value)}" for key, value in self.setting.items()) or "default"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "+".join(f"{key}-{_short(item)}" for key, item in value.items())
    return format(value, "g") if isinstance(value, float) else str(value)


@dataclass
class SweepGrid:
    experiment: str
    name: str
    ledger_dir: Path
    output_dir: Path
    base: dict
    arms: dict[str, dict]
    settings: list[dict]
    seeds: list[int]
    report: dict = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Every cell, seed by seed, arm by arm, setting by setting."""
        cells = []
        for seed in self.seeds:
            for arm, arm_values in self.arms.items():
                values = {key: value for key, value in arm_values.items() if key != "settings"}
                for setting in arm_values.get("settings", self.settings):
                    cells.append(Cell(arm, setting, seed, {**self.base, **values, **setting, "seed": seed}))
        return cells

    def runner(self) -> CellRunner:
        """The experiment's cell runner (imported here, so `--report` needs none of it)."""
        module, _, name = EXPERIMENTS.get(self.experiment, self.experiment).partition(":")
        try:
            runner_class = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            known = ", ".join(EXPERIMENTS)
            raise ConfigError(f"experiment {self.experiment!r} is not known ({known}, or module:Class).") from error
        return runner_class(self.output_dir)


def read_grid(path: str | Path) -> SweepGrid:
    """The grid file at `path`, checked: one `ConfigError` naming the key and what it must be."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file (relative paths start at {Path.cwd()}).")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of {', '.join(GRID_KEYS)}.")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; a grid file has {', '.join(GRID_KEYS)}.")
    name = raw.get("name", path.stem)
    _expect(isinstance(name, str) and NAME.match(name), "name", "a file-name-safe string", name)
    _expect(isinstance(raw.get("experiment"), str), "experiment", f"one of {', '.join(EXPERIMENTS)}, or module:Class")
    base = raw.get("base", {})
    _expect(isinstance(base, dict), "base", "a mapping of values every cell shares", base)
    arms = raw.get("arms")
    _expect(isinstance(arms, dict) and arms, "arms", "a non-empty mapping of arm name -> its values", arms)
    for arm, values in arms.items():
        _expect(isinstance(arm, str) and NAME.match(arm), "arms", "named with letters, digits, . _ + -", arm)
        _expect(isinstance(values, dict), f"arms.{arm}", "a mapping of values", values)
        if "settings" in values:
            _check_settings(values["settings"], f"arms.{arm}.settings")
    settings = raw.get("settings", [{}])
    _check_settings(settings, "settings")
    seeds = raw.get("seeds")
    is_seed = lambda seed: isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0  # noqa: E731
    _expect(
        isinstance(seeds, list) and seeds and all(map(is_seed, seeds)) and len(set(seeds)) == len(seeds),
        "seeds",
        "a non-empty list of distinct integers >= 0",
        seeds,
    )
    report = raw.get("report", {})
    _expect(isinstance(report, dict) and set(report) <= set(REPORT_KEYS), "report", f"a mapping of {REPORT_KEYS}")
    if "baseline" in report:
        _expect(report["baseline"] in arms, "report.baseline", "one of the arms", report["baseline"])
    claims = report.get("claims", [])
    _check_claims(claims, "report.claims", CLAIM_KEYS, arms)
    _check_claims(report.get("curve_claims", []), "report.curve_claims", CURVE_CLAIM_KEYS, arms)
    if claims or "baseline" in report:
        _expect({"x", "y"} <= set(report), "report", "given x and y where it compares arms", report)
    return SweepGrid(
        experiment=raw["experiment"],
        name=name,
        ledger_dir=Path(raw.get("ledger_dir", f"docs/experiments/{name}")),
        output_dir=Path(raw.get("output_dir", f"outputs/experiments/{name}")),
        base=base,
        arms=arms,
        settings=settings,
        seeds=seeds,
        report=report,
    )


def _check_claims(claims: Any, key: str, keys: tuple[str, ...], arms: dict) -> None:
    _expect(isinstance(claims, list), key, f"a list of mappings of {', '.join(keys)}", claims)
    for index, claim in enumerate(claims):
        item = f"{key}[{index}]"
        _expect(isinstance(claim, dict) and set(claim) == set(keys), item, f"a mapping of {', '.join(keys)}", claim)
        for field_name in set(keys) - {"arm", "baseline"}:
            value = claim[field_name]
            _expect(isinstance(value, str) and value, f"{item}.{field_name}", "a non-empty string", value)
        for role in ("arm", "baseline"):
            _expect(claim[role] in arms, f"{item}.{role}", "one of the arms", claim[role])


def _check_settings(settings: Any, key: str) -> None:
    _expect(
        isinstance(settings, list) and settings and all(isinstance(setting, dict) for setting in settings),
        key,
        "a non-empty list of mappings (one per setting)",
        settings,
    )
    keys = [tuple(sorted(setting.items(), key=str)) for setting in settings]
    _expect(len(set(map(str, keys))) == len(keys), key, "distinct settings", settings)


def _expect(ok: Any, key: str, what: str, value: Any = None) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {what}; got {value!r}.")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (a silent overwrite in plain YAML)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice (line {key_node.start_mark.line + 1}).")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
