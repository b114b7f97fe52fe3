"""`dpo-plugin sweep`: the grid file, the ledger (skip finished cells, rerun changed ones, survive --max_minutes and
SIGTERM), the bootstrap intervals against direct computations, and the report; a small fast experiment
(`line_cells.py`) for the mechanics, the real comparison cells on a tiny model (slow)."""

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import make_model, make_tokenizer, save_checkpoint

from dpo_plugin.cli import main
from dpo_plugin.experiments.sweep.grid import read_grid
from dpo_plugin.experiments.sweep.intervals import difference_at_matched_x, interval, replicate_means
from dpo_plugin.experiments.sweep.report import claim_verdict
from dpo_plugin.tasks.sentiment import generation
from dpo_plugin.utils.errors import ConfigError

HERE = Path(__file__).parent
RECIPES = HERE.parents[1] / "recipes"


@pytest.fixture(autouse=True)
def line_cells_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def write_grid(folder: Path, **changes) -> Path:
    grid = {
        "experiment": "line_cells:LineCells",
        "ledger_dir": str(folder / "ledger"),
        "output_dir": str(folder / "outputs"),
        "base": {"prompts": 64},
        "arms": {"baseline": {"slope": 0.1}, "steeper": {"slope": 0.3}},
        "settings": [{"strength": 1.0}, {"strength": 4.0}],
        "seeds": [1, 2],
        "report": {"x": "x", "y": "y", "baseline": "baseline"},
    } | changes
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def runs_logged(folder: Path) -> list[str]:
    log = folder / "outputs" / "runs.log"
    return log.read_text().split() if log.exists() else []


def cell_files(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted((folder / "ledger" / "cells").glob("*.json"))}


def test_a_grid_expands_seed_by_seed_arm_by_arm_later_values_winning(tmp_path):
    arms = {"a": {"slope": 0.1, "strength": 9.0}, "b": {"settings": [{"strength": 2.0}]}}
    path = write_grid(tmp_path, arms=arms, report={})
    cells = read_grid(path).cells()
    assert [cell.id for cell in cells] == [
        "a--strength-1--seed1",
        "a--strength-4--seed1",
        "b--strength-2--seed1",
        "a--strength-1--seed2",
        "a--strength-4--seed2",
        "b--strength-2--seed2",
    ]
    assert cells[0].values == {"prompts": 64, "slope": 0.1, "strength": 1.0, "seed": 1}  # the setting beats the arm
    assert cells[2].group == ("b", "strength 2")


@pytest.mark.parametrize("path", sorted((RECIPES / "experiments").glob("*.yaml")), ids=lambda path: path.name)
def test_the_shipped_grids_expand_and_every_cell_has_settings(path, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)  # grid files name recipes relative to the repository, as the README runs them
    grid = read_grid(path)
    runner = grid.runner()
    cells = grid.cells()
    assert len({cell.id for cell in cells}) == len(cells)
    settings = [runner.settings(cell.values) for cell in cells]
    assert all(setting["seed"] == cell.seed for setting, cell in zip(settings, cells, strict=True))
    assert grid.report.get("baseline") in grid.arms or grid.report["claims"]  # each shipped grid compares arms


@pytest.mark.parametrize(
    "text, message",
    [
        ("experiment: x\narms: {a: {}}\nseeds: [1]\nseeds: [2]\n", "key 'seeds' appears twice"),
        ("experiment: x\narms: {a: {}}\nseeds: [1, 1]\n", "seeds must be a non-empty list of distinct integers"),
        ("experiment: x\narms: {a: {}}\nseeds: [yes]\n", "seeds must be"),
        ("experiment: x\narms: {}\nseeds: [1]\n", "arms must be a non-empty mapping"),
        ("experiment: x\narms: {a: {}}\nseeds: [1]\nsettings: {beta: 1}\n", "settings must be a non-empty list"),
        ("experiment: x\narms: {a: {}}\nseeds: [1]\nreport: {baseline: b}\n", "report.baseline must be one of"),
        ("experiment: x\narms: {a: {}}\nseeds: [1]\ngird: 1\n", "unknown key"),
        (
            "experiment: x\narms: {a: {}}\nseeds: [1]\nreport: {x: k, y: g, claims: {a: 1}}\n",
            "report.claims must be a list",
        ),
        (
            "experiment: x\narms: {a: {}}\nseeds: [1]\nreport: {x: k, y: g, claims: [{claim: c, arm: a, baseline: b}]}",
            r"report.claims\[0\].baseline must be one of the arms",
        ),
        (
            "experiment: x\narms: {a: {}}\nseeds: [1]\nreport: {claims: [{claim: c, arm: a, baseline: a}]}\n",
            "given x and y",
        ),
        ("- 1\n", "must be a mapping"),
    ],
)
def test_a_bad_grid_file_is_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_grid(path)


def test_bad_cell_values_stop_the_sweep_before_any_cell_runs(tmp_path, capsys):
    path = write_grid(tmp_path, settings=[{"strength": 1.0}, {"strength": "high"}])
    with pytest.raises(SystemExit) as stopped:
        main(["sweep", "--config", str(path)])
    assert stopped.value.code == 2
    assert "strength must be a number >= 0; got 'high'" in capsys.readouterr().err
    assert runs_logged(tmp_path) == [] and not (tmp_path / "ledger").exists()


def test_a_rerun_skips_finished_cells_and_a_changed_setting_reruns_only_its_cells(tmp_path):
    path = write_grid(tmp_path)
    main(["sweep", "--config", str(path)])
    first = cell_files(tmp_path)
    assert len(first) == 8 and len(runs_logged(tmp_path)) == 8
    record = json.loads(first["steeper--strength-4--seed2.json"])
    assert record["arm"] == "steeper" and record["seed"] == 2 and record["setting"] == {"strength": 4.0}
    assert record["settings"] == {"prompts": 64, "slope": 0.3, "strength": 4.0, "seed": 2}
    assert len(record["per_prompt"]["y"]) == 64 and set(record["versions"]) >= {"torch", "trl", "dpo_plugin"}
    assert record["commit"] and record["finished"]

    main(["sweep", "--config", str(path)])  # nothing new: every cell is skipped
    assert cell_files(tmp_path) == first and len(runs_logged(tmp_path)) == 8

    path = write_grid(tmp_path, arms={"baseline": {"slope": 0.1}, "steeper": {"slope": 0.25}})
    main(["sweep", "--config", str(path)])
    rerun = runs_logged(tmp_path)[8:]
    assert sorted(rerun) == sorted(name.removesuffix(".json") for name in first if name.startswith("steeper"))
    after = cell_files(tmp_path)
    assert all(after[name] == first[name] for name in first if name.startswith("baseline"))


def test_max_minutes_starts_no_new_cell_and_the_report_marks_the_missing_ones(tmp_path, capsys):
    path = write_grid(tmp_path, base={"prompts": 64, "hold_seconds": 0.2})
    main(["sweep", "--config", str(path), "--max_minutes", "0.001"])
    assert len(cell_files(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "1 of 8 cells finished" in out
    report = (tmp_path / "ledger" / "report.md").read_text()
    assert "- steeper--strength-4--seed2: missing" in report and "- baseline--strength-1--seed1" not in report

    main(["sweep", "--config", str(path)])
    assert len(cell_files(tmp_path)) == 8 and len(runs_logged(tmp_path)) == 8  # the finished one was not rerun


def test_cells_runs_the_matching_cells_pattern_by_pattern_and_reports_the_whole_grid(tmp_path, capsys, caplog):
    path = write_grid(tmp_path)
    main(["sweep", "--config", str(path), "--cells", "steeper--*--seed2", "*--strength-1--seed2", "steeper--*"])
    assert runs_logged(tmp_path) == [
        "steeper--strength-1--seed2",
        "steeper--strength-4--seed2",
        "baseline--strength-1--seed2",
        "steeper--strength-1--seed1",
        "steeper--strength-4--seed1",
    ]
    assert "5 of 8 cells finished" in capsys.readouterr().out
    assert "- baseline--strength-4--seed1: missing" in (tmp_path / "ledger" / "report.md").read_text()

    with pytest.raises(SystemExit) as stopped:
        main(["sweep", "--config", str(path), "--cells", "baseline--*", "ppo--*"])
    assert stopped.value.code == 2
    assert "--cells 'ppo--*' matches no cell of the grid" in capsys.readouterr().err
    assert len(runs_logged(tmp_path)) == 5  # a pattern that matches nothing stops the sweep before any cell runs

    with caplog.at_level(logging.INFO, logger="dpo_plugin"):
        main(["sweep", "--config", str(path), "--cells", "baseline--*"])
    assert "5 of 8 cells finished, 3 to run matching --cells." in caplog.text  # cells left out are not 'finished'


def test_sigterm_stops_the_running_cell_keeps_the_finished_ones_and_a_rerun_completes(tmp_path):
    path = write_grid(tmp_path, base={"prompts": 64, "hold_seconds": 1.5})
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "dpo_plugin.cli", "sweep", "--config", str(path)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(runs_logged(tmp_path)) < 2 and time.monotonic() < deadline:  # the second cell has started
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert list(cell_files(tmp_path)) == ["baseline--strength-1--seed1.json"]
    assert "is not recorded" in err
    assert not [p for p in (tmp_path / "ledger").rglob(".*")]  # no temporary file left behind
    assert "missing" in (tmp_path / "ledger" / "report.md").read_text()

    main(["sweep", "--config", str(path)])
    assert len(cell_files(tmp_path)) == 8
    assert runs_logged(tmp_path).count("baseline--strength-4--seed1") == 2  # the interrupted cell ran from its start
    assert runs_logged(tmp_path).count("baseline--strength-1--seed1") == 1


def test_the_report_reads_each_arm_against_the_baseline_at_the_same_x(tmp_path):
    arms = {"baseline": {"slope": 0.1}, "steeper": {"slope": 0.3, "settings": [{"strength": 1.0}, {"strength": 8.0}]}}
    path = write_grid(tmp_path, seeds=[1, 2, 3], arms=arms)
    main(["sweep", "--config", str(path)])
    report = json.loads((tmp_path / "ledger" / "report.json").read_text())
    assert report["finished"] == 12 and not report["missing"]
    verdicts = {v["setting"]: v for v in report["verdicts"]}
    assert verdicts["strength 1"]["verdict"] == "holds"  # 0.5 + 0.3·√x against 0.5 + 0.1·√x
    assert verdicts["strength 8"]["verdict"].startswith("not resolved: x")  # beyond the baseline's largest x
    row = next(r for r in report["rows"] if r["arm"] == "baseline" and r["setting"] == "strength 1")
    records = [json.loads(p.read_text()) for p in (tmp_path / "ledger" / "cells").glob("baseline--strength-1--*")]
    assert row["y"]["estimate"] == pytest.approx(np.mean([r["per_prompt"]["y"] for r in records]), abs=1e-4)
    assert row["y"]["low"] < row["y"]["estimate"] < row["y"]["high"]
    for figure in ("frontier.png", "training.png"):
        assert (tmp_path / "ledger" / figure).read_bytes().startswith(b"\x89PNG")
    markdown = (tmp_path / "ledger" / "report.md").read_text()
    assert "| steeper | strength 1 | 1, 2, 3 |" in markdown and "12 of 12 cells finished" in markdown


def test_claims_compare_named_arms_at_the_same_x_and_give_one_verdict_each(tmp_path):
    arms = {"baseline": {"slope": 0.1}, "steeper": {"slope": 0.3}, "flat": {"slope": 0.0, "level": 0.4}}
    claims = [
        {"claim": "steeper above baseline", "arm": "steeper", "baseline": "baseline"},
        {"claim": "flat above steeper", "arm": "flat", "baseline": "steeper"},
        {"claim": "baseline above itself", "arm": "baseline", "baseline": "baseline"},
    ]
    path = write_grid(tmp_path, seeds=[1, 2], arms=arms, report={"x": "x", "y": "y", "claims": claims})
    main(["sweep", "--config", str(path)])
    report = json.loads((tmp_path / "ledger" / "report.json").read_text())
    verdicts = {claim["claim"]: claim for claim in report["claims"]}
    assert verdicts["steeper above baseline"]["verdict"] == "holds at 2 of 2 settings"
    assert verdicts["flat above steeper"]["verdict"] == "does not hold at 2 of 2 settings"
    assert verdicts["baseline above itself"]["verdict"] == "not resolved at any of 2 settings"  # a difference of 0
    assert [row["setting"] for row in verdicts["steeper above baseline"]["settings"]] == ["strength 1", "strength 4"]
    assert report["verdicts"] == []  # no report.baseline: no every-arm comparison
    markdown = (tmp_path / "ledger" / "report.md").read_text()
    assert "| steeper above baseline (steeper against baseline) | holds at 2 of 2 settings |" in markdown
    assert "### flat above steeper" in markdown


def test_a_diverged_cell_is_recorded_counted_in_its_row_and_not_run_again(tmp_path):
    arms = {"baseline": {"slope": 0.1}, "steeper": {"slope": 0.3, "diverge_seed": 2}}
    path = write_grid(tmp_path, arms=arms, settings=[{"strength": 1.0}])
    main(["sweep", "--config", str(path)])
    failed = json.loads(cell_files(tmp_path)["steeper--strength-1--seed2.json"])
    assert failed["failed"] == "diverged: a non-finite loss at step 2" and failed["metrics"] == {}
    main(["sweep", "--config", str(path)])
    assert runs_logged(tmp_path).count("steeper--strength-1--seed2") == 1  # a failure is a result: not run again
    report = json.loads((tmp_path / "ledger" / "report.json").read_text())
    assert report["failed"] == {"steeper--strength-1--seed2": "diverged: a non-finite loss at step 2"}
    row = next(row for row in report["rows"] if row["arm"] == "steeper")
    assert row["seeds"] == [1] and row["failed"] == "1 of 2" and "y seed spread" not in row
    seed1 = json.loads(cell_files(tmp_path)["steeper--strength-1--seed1.json"])
    assert row["y"]["estimate"] == pytest.approx(np.mean(seed1["per_prompt"]["y"]), abs=1e-4)
    baseline = next(row for row in report["rows"] if row["arm"] == "baseline")
    seed_means = [
        json.loads(cell_files(tmp_path)[f"baseline--strength-1--seed{s}.json"])["metrics"]["y"] for s in (1, 2)
    ]
    assert baseline["y seed spread"] == pytest.approx(max(seed_means) - min(seed_means))
    assert "## Failed runs" in (tmp_path / "ledger" / "report.md").read_text()


def test_a_curve_claim_compares_the_growth_over_the_second_half_seed_by_seed(tmp_path):
    claim = {
        "claim": "baseline bounded where steeper grows",
        "curve": "margin",
        "arm": "baseline",
        "baseline": "steeper",
    }
    report = {"x": "x", "y": "y", "curve_claims": [claim]}
    path = write_grid(tmp_path, seeds=[1, 2, 3], settings=[{"strength": 1.0}], report=report)
    main(["sweep", "--config", str(path)])
    (row,) = json.loads((tmp_path / "ledger" / "report.json").read_text())["curve_claims"][0]["settings"]

    def growth(arm, seed):  # the mean of the last 2 of 20 logged values minus the mean of values 9 to 11
        record = json.loads(cell_files(tmp_path)[f"{arm}--strength-1--seed{seed}.json"])
        values = [value for _, value in record["details"]["curves"]["margin"]]
        return np.mean(values[-2:]) - np.mean(values[8:11])

    differences = [growth("steeper", seed) - growth("baseline", seed) for seed in (1, 2, 3)]
    half_width = 4.302652729911275 * np.std(differences, ddof=1) / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert row["seeds"] == [1, 2, 3] and row["difference"] == pytest.approx(np.mean(differences))
    assert row["low"] == pytest.approx(np.mean(differences) - half_width)
    assert row["baseline growth"] == pytest.approx(np.mean([growth("steeper", seed) for seed in (1, 2, 3)]))
    assert row["verdict"] == "holds"
    assert (tmp_path / "ledger" / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "## baseline bounded where steeper grows" in (tmp_path / "ledger" / "report.md").read_text()


def test_claim_verdicts_count_settings():
    holds, fails, open_ = ({"verdict": verdict} for verdict in ("holds", "does not hold", "not resolved: x beyond"))
    assert claim_verdict([holds, open_]) == "holds at 1 of 2 settings (1 not resolved)"
    assert claim_verdict([holds, fails]) == "mixed: holds at 1, does not hold at 1 of 2 settings"
    assert claim_verdict([]) == "not resolved: no finished cells to compare"


def test_bootstrap_intervals_match_the_normal_interval_of_a_mean_over_prompts():
    rng = np.random.default_rng(5)
    values = rng.normal(1.0, 2.0, size=400)
    replicated = replicate_means({"g": [{"m": values.tolist()}]}, ["m"], replicates=4000)
    estimate, low, high = interval(replicated["g"]["m"])
    half = 1.959964 * values.std(ddof=1) / np.sqrt(values.size)
    assert estimate == pytest.approx(values.mean())
    assert low == pytest.approx(values.mean() - half, abs=0.03)
    assert high == pytest.approx(values.mean() + half, abs=0.03)


def test_seeds_add_their_spread_to_the_interval():
    rng = np.random.default_rng(6)
    same = [{"m": rng.normal(0.0, 1.0, 200).tolist()} for _ in range(3)]
    spread = [
        {"m": (np.asarray(cell["m"]) + shift).tolist()} for cell, shift in zip(same, (-1.0, 0.0, 1.0), strict=True)
    ]
    replicated = replicate_means({"same": same, "spread": spread}, ["m"])
    width = lambda key: np.subtract(*interval(replicated[key]["m"])[2:0:-1])  # noqa: E731
    assert width("spread") > 3 * width("same")


def test_difference_at_matched_x_interpolates_the_baseline_curve():
    def point(x, y):
        return {"x": np.full(5, x), "y": np.full(5, y)}

    curve = [point(0.0, 0.5), point(2.0, 0.6), point(4.0, 0.62)]
    row = difference_at_matched_x(point(3.0, 0.71), curve, "x", "y")
    assert row["baseline_y"] == pytest.approx(0.61) and row["difference"] == pytest.approx(0.1)
    assert row["verdict"] == "holds"
    assert difference_at_matched_x(point(3.0, 0.5), curve, "x", "y")["verdict"] == "does not hold"
    assert difference_at_matched_x(point(5.0, 0.9), curve, "x", "y")["verdict"].startswith("not resolved: x 5.00")


def test_a_point_beyond_the_baseline_curve_gets_no_interval_even_where_replicates_fall_inside():
    curve = [{"x": np.full(5, x), "y": np.full(5, y)} for x, y in ((0.0, 0.5), (4.0, 0.6))]
    beyond = {"x": np.array([5.0, 3.0, 3.0, 3.0, 3.0]), "y": np.full(5, 0.9)}  # estimate beyond, replicates inside
    row = difference_at_matched_x(beyond, curve, "x", "y")
    assert math.isnan(row["difference"]) and math.isnan(row["low"]) and math.isnan(row["high"])
    assert row["verdict"].startswith("not resolved: x 5.00")


@pytest.mark.slow
def test_comparison_cells_offline_and_online_on_a_tiny_model(tmp_path, monkeypatch):
    """The shipped online_vs_offline grid's experiment on a tiny random model with the real data and gold labeller:
    cells recorded with per-prompt values and probes, a rerun trains nothing, the report compares at matched KL."""
    from test_comparison import tiny_recipes

    monkeypatch.setattr(generation, "cache_dir", lambda: tmp_path / "cache")
    checkpoint = save_checkpoint(tmp_path / "tiny", make_model(len(make_tokenizer()), hidden_size=32))
    flags = tiny_recipes(tmp_path / "recipes", checkpoint)
    recipes = {flag[2:]: value for flag, value in zip(flags[::2], flags[1::2], strict=True)}
    shipped = yaml.safe_load((RECIPES / "experiments" / "online_vs_offline.yaml").read_text())
    sizes = {"train_prompts": 8, "test_prompts": 4, "max_new_tokens": 6, "eval_pairs": 4, "eval_prompts": 4}
    sizes |= {"probe_pairs": 4, "probe_prompts": 4, "batch_size": 4, "model_name_or_path": checkpoint}
    grid = {
        **shipped,
        "ledger_dir": str(tmp_path / "ledger"),
        "output_dir": str(tmp_path / "outputs"),
        "base": shipped["base"] | recipes | sizes,
        "arms": {
            name: {"method": shipped["arms"][name]["method"]}
            for name in ("offline-dpo", "online-dpo-gold", "online-dpo-rm")
        }
        | {"offline-dpo-2epochs": {"method": "dpo", "recipe_overrides": {"num_train_epochs": 2}}}
        | {"ppo-gt": {"method": "ppo/gold", "reward_model_score": True}},
        "settings": [{"beta": 0.1}],
        "seeds": [42],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    main(["sweep", "--config", str(path)])
    files = cell_files(tmp_path)
    assert sorted(files) == [
        "offline-dpo--beta-0.1--seed42.json",
        "offline-dpo-2epochs--beta-0.1--seed42.json",
        "online-dpo-gold--beta-0.1--seed42.json",
        "online-dpo-rm--beta-0.1--seed42.json",
        "ppo-gt--beta-0.1--seed42.json",
    ]
    offline, longer = (json.loads(files[f"offline-dpo{arm}--beta-0.1--seed42.json"]) for arm in ("", "-2epochs"))
    assert longer["metrics"]["steps"] == 2 * offline["metrics"]["steps"]  # recipe_overrides reached the recipe
    assert (
        longer["settings"]["recipe"]["num_train_epochs"] == 2 and offline["settings"]["recipe"]["num_train_epochs"] == 1
    )
    online = json.loads(files["online-dpo-gold--beta-0.1--seed42.json"])
    assert online["settings"]["method"] == "online-dpo/gold" and online["settings"]["recipe"]["rounds"] == 2
    assert [step for step, _ in offline["details"]["curves"]["rewards/margins"]][-1] == offline["metrics"]["steps"]
    prompts = len(online["per_prompt"]["gold"])  # the held-out prompts left after tied pairs are dropped
    assert prompts >= 1 and online["metrics"]["gold"] == pytest.approx(np.mean(online["per_prompt"]["gold"]), abs=1e-4)
    assert len(online["per_prompt"]["kl"]) == prompts and online["start_per_prompt"]["kl"] == [0.0] * prompts
    assert [probe["step"] for probe in online["details"]["probes"]] == [0, 1, 2]
    assert set(online["seconds"]) == {"setup", "train", "evaluate"}
    assert "reward_model_accuracy" in json.loads(files["online-dpo-rm--beta-0.1--seed42.json"])["details"]
    assert "reward_model_recipe" not in online["settings"] and "rm_score" not in online["metrics"]
    ppo_gt = json.loads(files["ppo-gt--beta-0.1--seed42.json"])  # PPO against the gold reward, scored by the RM too
    assert ppo_gt["settings"]["method"] == "ppo/gold" and ppo_gt["metrics"]["steps"] == 2
    assert ppo_gt["metrics"]["rm_score"] == pytest.approx(np.mean(ppo_gt["per_prompt"]["rm_score"]), abs=1e-4)
    assert len(ppo_gt["start_per_prompt"]["rm_score"]) == prompts
    assert ppo_gt["details"]["reward_model_train_seconds"] > 0

    main(["sweep", "--config", str(path)])  # every cell finished: nothing is trained again
    assert cell_files(tmp_path) == files
    report = json.loads((tmp_path / "ledger" / "report.json").read_text())
    assert {v["arm"] for v in report["verdicts"]} == {
        "online-dpo-gold",
        "online-dpo-rm",
        "offline-dpo-2epochs",
        "ppo-gt",
    }
