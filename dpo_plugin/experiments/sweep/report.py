"""`dpo-plugin sweep --report`: the table, the frontier plot and the verdicts, from whatever cells are finished.

Rows are (arm, setting) groups, each over its finished seeds: per-prompt metrics as the estimate with a 95%
bootstrap interval over prompts and seeds (`intervals.py`), other metrics as the mean and the spread (max − min)
over seeds, and the mean wall time of each phase, in minutes. Missing and stale cells are listed by name. With
`report: {x, y, baseline}` in the grid, the frontier plot draws y against x per arm (every arm starting at the common
starting policy, x = 0, where the cells record it), and each other arm's (setting's) y is compared with the baseline
arm's curve at the same x.
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean

import matplotlib

from ...utils.atomic import atomic_file, write_json
from .grid import Cell, SweepGrid
from .intervals import difference_at_matched_x, interval, replicate_means

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

START = ("start", "")  # the group of the common starting policy in the bootstrap


def build_report(grid: SweepGrid, cells: list[Cell], records: dict[str, dict], stale: list[Cell], command: str):
    """Write report.md, report.json and (with report x and y) frontier.png into the ledger folder; return the
    markdown and the paths written."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for cell in cells:
        if cell.id in records:
            groups.setdefault(cell.group, []).append(records[cell.id])
    per_prompt = sorted({metric for rows in groups.values() for r in rows for metric in r["per_prompt"]})
    start = {}  # every cell starts from the same policy, scored on the same draw: one start, each metric's first
    for r in (r for rows in groups.values() for r in rows):
        start = r.get("start_per_prompt", {}) | start
    bootstrap_groups = {group: [r["per_prompt"] for r in rows] for group, rows in groups.items()}
    if start and all(metric in start for metric in per_prompt):
        bootstrap_groups[START] = [start]
    replicated = replicate_means(bootstrap_groups, per_prompt) if per_prompt and groups else {}
    rows = [_row(group, records_of, replicated.get(group, {})) for group, records_of in groups.items()]
    verdicts = _verdicts(grid, groups, replicated)
    missing = [cell for cell in cells if cell.id not in records]
    markdown = _markdown(grid, cells, rows, verdicts, missing, stale, command, START in replicated)
    folder = grid.ledger_dir
    paths = [folder / "report.md", folder / "report.json"]
    atomic_file(paths[0], lambda temporary: Path(temporary).write_text(markdown))
    payload = {"command": command, "cells": len(cells), "finished": len(records), "rows": rows, "verdicts": verdicts}
    write_json(paths[1], payload | {"missing": [cell.id for cell in missing], "stale": [cell.id for cell in stale]})
    x, y = grid.report.get("x"), grid.report.get("y")
    if x in per_prompt and y in per_prompt:
        paths.append(folder / "frontier.png")
        _save(plot_frontier(grid, replicated, x, y), paths[-1])
    return markdown, paths


def _row(group: tuple[str, str], records: list[dict], replicated: dict) -> dict:
    arm, setting = group
    row = {"arm": arm, "setting": setting, "seeds": sorted(r["seed"] for r in records)}
    for metric, values in replicated.items():
        estimate, low, high = interval(values)
        row[metric] = {"estimate": estimate, "low": low, "high": high}
    for metric in dict.fromkeys(name for r in records for name in r["metrics"]):
        if metric not in replicated:
            series = [r["metrics"][metric] for r in records if metric in r["metrics"]]
            row[metric] = {"mean": mean(series), "spread": max(series) - min(series)}
    for phase in dict.fromkeys(name for r in records for name in r["seconds"]):
        row[f"{phase} min"] = mean(r["seconds"].get(phase, 0.0) for r in records) / 60
    return row


def _verdicts(grid: SweepGrid, groups: dict, replicated: dict) -> list[dict]:
    """Each non-baseline group's y against the baseline arm's curve at its x (`difference_at_matched_x`)."""
    x, y, baseline = (grid.report.get(key) for key in ("x", "y", "baseline"))
    curve = [replicated[group] for group in groups if group[0] == baseline and group in replicated]
    if not (x and y and baseline and curve) or any(x not in point or y not in point for point in curve):
        return []
    if START in replicated:
        curve.append(replicated[START])
    verdicts = []
    for group in groups:
        if group[0] != baseline and group in replicated:
            row = difference_at_matched_x(replicated[group], curve, x, y)
            verdicts.append({"arm": group[0], "setting": group[1], **row})
    return verdicts


def _markdown(grid, cells, rows, verdicts, missing, stale, command, has_start) -> str:
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
        "over seeds. `<phase> min`: the mean wall time of that phase of a cell.",
        "",
    ]
    metrics = list(dict.fromkeys(key for row in rows for key in row if key not in ("arm", "setting", "seeds")))
    lines.append("| arm | setting | seeds | " + " | ".join(metrics) + " |")
    lines.append("|---|---|---|" + "---|" * len(metrics))
    for row in rows:
        values = [_format(row.get(metric)) for metric in metrics]
        seeds = ", ".join(map(str, row["seeds"]))
        lines.append(f"| {row['arm']} | {row['setting']} | {seeds} | " + " | ".join(values) + " |")
    if verdicts:
        x, y, baseline = (grid.report[key] for key in ("x", "y", "baseline"))
        lines += [
            "",
            f"## Against {baseline} at the same {x}",
            "",
            f"Each row's {y} minus {baseline}'s {y} read off its curve (piecewise linear through its settings"
            f"{' and the starting policy at ' + x + ' = 0' if has_start else ''}) at the row's {x}, per bootstrap "
            "replicate; holds: the 95% interval lies above 0; does not hold: below; not resolved: it spans 0, or the "
            f"row's {x} lies beyond the curve. Between two of the baseline's points the curve is a straight line: "
            "where they lie far apart and the true curve bends up (concave), the line runs below it, so a verdict read "
            "in such a gap favours the row; the interval does not cover that.",
            "",
            f"| arm | setting | {x} | {y} | {baseline} at that {x} | difference [95%] | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in verdicts:
            difference = f"{v['difference']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" if v["low"] == v["low"] else "–"
            baseline_y = f"{v['baseline_y']:.3f}" if v["baseline_y"] == v["baseline_y"] else "–"
            lines.append(
                f"| {v['arm']} | {v['setting']} | {v['x']:.2f} | {v['y']:.3f} | {baseline_y} | {difference} | "
                f"{v['verdict']} |"
            )
    if missing or stale:
        lines += ["", "## Not finished", ""]
        lines += [f"- {cell.id}: {'stale (its settings changed)' if cell in stale else 'missing'}" for cell in missing]
    if (grid.ledger_dir / "frontier.png").exists() or verdicts:
        lines += ["", "![frontier](frontier.png)"]
    return "\n".join(lines) + "\n"


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.1f}"
    if "estimate" in value:
        return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
    return f"{value['mean']:.3g} ± {value['spread']:.2g}"


def plot_frontier(grid: SweepGrid, replicated: dict, x: str, y: str):
    """y against x per arm, one point per setting with both 95% intervals, joined in order of x from the start."""
    figure, axis = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    start = replicated.get(START)
    if start is not None:
        axis.scatter([start[x][0]], [start[y][0]], color="black", marker="x", label="start", zorder=3)
    for index, arm in enumerate(grid.arms):
        points = [values for (name, _), values in replicated.items() if name == arm]
        if not points:
            continue
        points.sort(key=lambda values: values[x][0])
        xs, ys = [interval(p[x]) for p in points], [interval(p[y]) for p in points]
        line_x = ([start[x][0]] if start is not None else []) + [v[0] for v in xs]
        line_y = ([start[y][0]] if start is not None else []) + [v[0] for v in ys]
        colour = f"C{index}"
        axis.plot(
            line_x, line_y, color=colour, alpha=0.6, linestyle="--" if arm == grid.report.get("baseline") else "-"
        )
        axis.errorbar(
            [v[0] for v in xs],
            [v[0] for v in ys],
            xerr=[[v[0] - v[1] for v in xs], [v[2] - v[0] for v in xs]],
            yerr=[[v[0] - v[1] for v in ys], [v[2] - v[0] for v in ys]],
            fmt="o",
            capsize=2,
            color=colour,
            label=arm,
        )
    axis.set_xlabel(x)
    axis.set_ylabel(y)
    axis.set_title(f"{grid.name}: {y} against {x} (95% bootstrap intervals)")
    axis.legend(loc="best", fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def _save(figure, path: Path) -> None:
    atomic_file(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    plt.close(figure)
