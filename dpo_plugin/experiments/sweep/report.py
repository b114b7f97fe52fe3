"""`dpo-plugin sweep --report`: the table, the frontier plot and the verdicts, from whatever cells are finished.

Rows are (arm, setting) groups, each over its finished seeds: per-prompt metrics as the estimate with a 95%
bootstrap interval over prompts and seeds (`intervals.py`), other metrics as the mean and the spread (max − min)
over seeds, the spread of y's seed means, failed runs counted, and the mean wall time of each phase, in minutes.
Missing, stale and failed cells are listed by name. With `report: {x, y}` in the grid, the frontier plot draws y
against x per arm (every arm starting at the common starting policy, x = 0, where the cells record it; each setting's
path along training faint), y during training per arm, and the comparisons: with `baseline`, each other arm's
(setting's) y against the baseline arm's curve at the same x; with `claims`, each named arm against another, the
same way, with one verdict per claim; with `curve_claims`, a training-log curve's growth (`curves.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from ...utils.atomic import atomic_file, write_json
from .curves import curve_claim
from .grid import Cell, SweepGrid
from .intervals import difference_at_matched_x, interval, replicate_means
from .plots import START, plot_curve_claims, plot_frontier, plot_training, probe_paths, probes_by_step, save_figure


def build_report(grid: SweepGrid, cells: list[Cell], records: dict[str, dict], stale: list[Cell], command: str):
    """Write report.md, report.json and (with report x and y) frontier.png into the ledger folder; return the
    markdown and the paths written."""
    groups: dict[tuple[str, str], list[dict]] = {}  # the finished cells that did not fail
    failures: dict[tuple[str, str], list[dict]] = {}
    for cell in cells:
        if cell.id in records:
            record = records[cell.id]
            (failures if record.get("failed") else groups).setdefault(cell.group, []).append(record)
    per_prompt = sorted({metric for rows in groups.values() for r in rows for metric in r["per_prompt"]})
    start = {}  # every cell starts from the same policy, scored on the same draw: one start, each metric's first
    for r in (r for rows in groups.values() for r in rows):
        start = r.get("start_per_prompt", {}) | start
    bootstrap_groups = {group: [r["per_prompt"] for r in rows] for group, rows in groups.items()}
    if start and all(metric in start for metric in per_prompt):
        bootstrap_groups[START] = [start]
    replicated = replicate_means(bootstrap_groups, per_prompt) if per_prompt and groups else {}
    y = grid.report.get("y")
    rows = [
        _row(group, groups.get(group, []), failures.get(group, []), replicated.get(group, {}), y)
        for group in dict.fromkeys(cell.group for cell in cells)
        if group in groups or group in failures
    ]
    verdicts, claims = _verdicts(grid, groups, replicated), _claims(grid, groups, replicated)
    curve_claims = [curve_claim(claim, groups) for claim in grid.report.get("curve_claims", [])]
    missing = [cell for cell in cells if cell.id not in records]
    failed = [record for records_of in failures.values() for record in records_of]
    findings = Findings(rows, verdicts, claims, curve_claims, failed)
    markdown = _markdown(grid, cells, findings, missing, stale, command, START in replicated)
    folder = grid.ledger_dir
    paths = [folder / "report.md", folder / "report.json"]
    atomic_file(paths[0], lambda temporary: Path(temporary).write_text(markdown))
    payload = {"command": command, "cells": len(cells), "finished": len(records), "rows": rows, "verdicts": verdicts}
    payload |= {"claims": claims, "curve_claims": curve_claims}
    payload |= {"failed": {record["cell"]: record["failed"] for record in failed}}
    write_json(paths[1], payload | {"missing": [cell.id for cell in missing], "stale": [cell.id for cell in stale]})
    x = grid.report.get("x")
    if x in per_prompt and y in per_prompt:
        paths.append(folder / "frontier.png")
        save_figure(plot_frontier(grid, replicated, probe_paths(groups, x, y), x, y), paths[-1])
    if y is not None and any(probes_by_step(records, (y,)) for records in groups.values()):
        paths.append(folder / "training.png")
        save_figure(plot_training(grid, groups, y), paths[-1])
    if any(claim["settings"] for claim in curve_claims):
        paths.append(folder / "curves.png")
        save_figure(plot_curve_claims(grid, curve_claims, groups), paths[-1])
    return markdown, paths


def _row(group: tuple[str, str], records: list[dict], failures: list[dict], replicated: dict, y: str | None) -> dict:
    """A setting's row over its seeds: each metric, the spread of y's seed means (its stability), the failed runs
    (counted: they are part of the setting's result) and the mean time of each phase."""
    arm, setting = group
    row = {"arm": arm, "setting": setting, "seeds": sorted(r["seed"] for r in records)}
    for metric, values in replicated.items():
        estimate, low, high = interval(values)
        row[metric] = {"estimate": estimate, "low": low, "high": high}
    seed_means = [r["metrics"][y] for r in records if y in r["metrics"]]
    if len(seed_means) > 1:
        row[f"{y} seed spread"] = max(seed_means) - min(seed_means)
    if failures:
        row["failed"] = f"{len(failures)} of {len(records) + len(failures)}"
    for metric in dict.fromkeys(name for r in records for name in r["metrics"]):
        if metric not in replicated:
            series = [r["metrics"][metric] for r in records if metric in r["metrics"]]
            row[metric] = {"mean": mean(series), "spread": max(series) - min(series)}
    for phase in dict.fromkeys(name for r in records for name in r["seconds"]):
        row[f"{phase} min"] = mean(r["seconds"].get(phase, 0.0) for r in records) / 60
    return row


def _verdicts(grid: SweepGrid, groups: dict, replicated: dict) -> list[dict]:
    """Each group of every arm but the baseline against the baseline arm's curve (`_against`)."""
    baseline = grid.report.get("baseline")
    if baseline is None:
        return []
    return _against(grid, baseline, [arm for arm in grid.arms if arm != baseline], groups, replicated)


def _claims(grid: SweepGrid, groups: dict, replicated: dict) -> list[dict]:
    """Each of `report.claims` (an arm above another at the same x): its arm's groups against the other's curve,
    and one verdict over them (`claim_verdict`)."""
    claims = []
    for claim in grid.report.get("claims", []):
        rows = _against(grid, claim["baseline"], [claim["arm"]], groups, replicated)
        claims.append(claim | {"verdict": claim_verdict(rows), "settings": rows})
    return claims


def _against(grid: SweepGrid, baseline: str, arms: list[str], groups: dict, replicated: dict) -> list[dict]:
    """Each group of `arms`: its y minus the `baseline` arm's y at its x, the curve piecewise linear through the
    baseline's settings and the common start (`difference_at_matched_x`); none while the baseline has no group."""
    x, y = grid.report["x"], grid.report["y"]
    curve = [replicated[group] for group in groups if group[0] == baseline and group in replicated]
    if not curve or any(x not in point or y not in point for point in curve):
        return []
    if START in replicated:
        curve.append(replicated[START])
    return [
        {"arm": group[0], "setting": group[1], **difference_at_matched_x(replicated[group], curve, x, y)}
        for group in groups
        if group[0] in arms and group in replicated
    ]


def claim_verdict(rows: list[dict]) -> str:
    """One verdict from a claim's settings: "holds" where some hold and none does not, "does not hold" where some
    do not and none holds, "mixed" where both, "not resolved" where none is resolved (or none is finished)."""
    held = sum(row["verdict"] == "holds" for row in rows)
    refuted = sum(row["verdict"] == "does not hold" for row in rows)
    if held and refuted:
        return f"mixed: holds at {held}, does not hold at {refuted} of {len(rows)} settings"
    if held or refuted:
        verdict, rest = "holds" if held else "does not hold", len(rows) - held - refuted
        return f"{verdict} at {held or refuted} of {len(rows)} settings" + (f" ({rest} not resolved)" if rest else "")
    return "not resolved" + (f" at any of {len(rows)} settings" if rows else ": no finished cells to compare")


@dataclass
class Findings:
    """What the report says of the finished cells: a row per setting, the comparisons, the failed runs."""

    rows: list[dict]
    verdicts: list[dict]
    claims: list[dict]
    curve_claims: list[dict]
    failed: list[dict]


def _markdown(grid, cells, findings: Findings, missing, stale, command, has_start) -> str:
    rows, verdicts, claims, curve_claims = findings.rows, findings.verdicts, findings.claims, findings.curve_claims
    finished = len(cells) - len(missing)
    lines = [
        f"# {grid.name}",
        "",
        f"{finished} of {len(cells)} cells finished ({len(grid.seeds)} seeds × {len(cells) // len(grid.seeds)} "
        f"arm-settings). Built by `{command}` from the cell files in `cells/`; each cell's settings, metrics, "
        "per-prompt values, time per phase, library versions and commit are in its file.",
        "",
        "Per-prompt metrics: the estimate with its 95% bootstrap interval [low, high] over held-out prompts and seeds "
        "(prompts drawn once per replicate for every row: paired). Other metrics: the mean ± the spread (max − min) "
        "over seeds. `<y> seed spread`: the highest seed's mean minus the lowest's. `failed`: runs that diverged, "
        "left out of the estimates and counted here. `<phase> min`: the mean wall time of that phase of a cell.",
        "",
    ]
    metrics = list(dict.fromkeys(key for row in rows for key in row if key not in ("arm", "setting", "seeds")))
    lines.append("| arm | setting | seeds | " + " | ".join(metrics) + " |")
    lines.append("|---|---|---|" + "---|" * len(metrics))
    for row in rows:
        values = [_format(row.get(metric)) for metric in metrics]
        seeds = ", ".join(map(str, row["seeds"]))
        lines.append(f"| {row['arm']} | {row['setting']} | {seeds} | " + " | ".join(values) + " |")
    x, y = grid.report.get("x"), grid.report.get("y")
    reading = (
        f"Each row's {y} minus the other arm's {y} read off its curve (piecewise linear through its settings"
        f"{' and the starting policy at ' + str(x) + ' = 0' if has_start else ''}) at the row's {x}, per bootstrap "
        "replicate; holds: the 95% interval lies above 0; does not hold: below; not resolved: it spans 0, or the "
        f"row's {x} lies beyond the curve. Between two of the other arm's points the curve is a straight line: "
        "where they lie far apart and the true curve bends up (concave), the line runs below it, so a verdict read "
        "in such a gap favours the row; the interval does not cover that."
    )
    if claims:
        lines += ["", f"## Claims, at the same {x}", "", reading, "", "| claim | verdict |", "|---|---|"]
        lines += [
            f"| {claim['claim']} ({claim['arm']} against {claim['baseline']}) | {claim['verdict']} |"
            for claim in claims
        ]
        for claim in claims:
            lines += ["", f"### {claim['claim']}", ""]
            lines += (
                _verdict_table(claim["settings"], x, y, claim["baseline"]) if claim["settings"] else ["No cells yet."]
            )
    for claim in curve_claims:
        lines += ["", f"## {claim['claim']}", "", CURVE_READING.format(**claim), ""] + _curve_claim_table(claim)
    if verdicts:
        baseline = grid.report["baseline"]
        lines += ["", f"## Against {baseline} at the same {x}", "", reading, ""]
        lines += _verdict_table(verdicts, x, y, baseline)
    if findings.failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {record['cell']}: {record['failed']}" for record in findings.failed]
    if missing or stale:
        lines += ["", "## Not finished", ""]
        lines += [f"- {cell.id}: {'stale (its settings changed)' if cell in stale else 'missing'}" for cell in missing]
    if (grid.ledger_dir / "frontier.png").exists() or verdicts:
        lines += ["", "![frontier](frontier.png)"]
    for figure in ("training", "curves"):
        if (grid.ledger_dir / f"{figure}.png").exists():
            lines += ["", f"![{figure}]({figure}.png)"]
    return "\n".join(lines) + "\n"


CURVE_READING = (
    "`{curve}` from the training logs, each setting both arms ran: its growth over the second half of training (the "
    "mean of the last tenth of logged values minus the mean of the tenth around the middle) and its end value, means "
    "over the seeds; the difference is {baseline}'s growth minus {arm}'s, seed by seed, with the 95% t interval over "
    "the seeds; holds: above 0."
)


def _curve_claim_table(claim: dict) -> list[str]:
    if not claim["settings"]:
        return ["No setting that both arms ran has finished yet."]
    arm, baseline = claim["arm"], claim["baseline"]
    header = f"| setting | seeds | {arm} growth | {arm} end | {baseline} growth | {baseline} end | difference [95%] |"
    lines = [header + " verdict |", "|---|---|---|---|---|---|---|---|"]
    for row in claim["settings"]:
        difference = (
            f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]" if row["low"] == row["low"] else "–"
        )
        numbers = " | ".join(f"{row[key]:.3f}" for key in ("arm growth", "arm end", "baseline growth", "baseline end"))
        seeds = ", ".join(map(str, row["seeds"]))
        lines.append(f"| {row['setting']} | {seeds} | {numbers} | {difference} | {row['verdict']} |")
    return lines


def _verdict_table(rows: list[dict], x: str, y: str, baseline: str) -> list[str]:
    lines = [
        f"| arm | setting | {x} | {y} | {baseline} at that {x} | difference [95%] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in rows:
        difference = f"{v['difference']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" if v["low"] == v["low"] else "–"
        baseline_y = f"{v['baseline_y']:.3f}" if v["baseline_y"] == v["baseline_y"] else "–"
        lines.append(
            f"| {v['arm']} | {v['setting']} | {v['x']:.2f} | {v['y']:.3f} | {baseline_y} | {difference} | "
            f"{v['verdict']} |"
        )
    return lines


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return format(round(value, 4), ".4g")
    if "estimate" in value:
        return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
    return f"{value['mean']:.3g} ± {value['spread']:.2g}"
