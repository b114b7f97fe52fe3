"""The sweep report's figures: the frontier (y against x per arm, with intervals and each setting's path along
training) and y during training per arm."""

from __future__ import annotations

from pathlib import Path
from statistics import mean

import matplotlib

from ...utils.atomic import atomic_file
from .grid import SweepGrid
from .intervals import interval

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

START = ("start", "")  # the group of the common starting policy in the bootstrap


def probes_by_step(records: list[dict], keys: tuple[str, ...]) -> dict[int, list[dict]]:
    """The cells' probes during training (`details.probes`, each with its `step`) that hold every one of `keys`,
    gathered by step, in step order."""
    by_step: dict[int, list[dict]] = {}
    for record in records:
        for point in record.get("details", {}).get("probes", []):
            if all(key in point for key in keys):
                by_step.setdefault(point["step"], []).append(point)
    return dict(sorted(by_step.items()))


def probe_paths(groups: dict, x: str, y: str) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Per group, the (x, y) of its probes averaged over its seeds probe by probe: a setting's path from the start to
    its end point."""
    return {
        group: [
            (mean(p[x] for p in points), mean(p[y] for p in points))
            for points in probes_by_step(records, (x, y)).values()
        ]
        for group, records in groups.items()
    }


def plot_frontier(grid: SweepGrid, replicated: dict, paths: dict, x: str, y: str):
    """y against x per arm: one point per setting with both 95% intervals, joined in order of x from the start, and
    each setting's path along training (`paths`: its probes, averaged over seeds) as a faint line."""
    figure, axis = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    start = replicated.get(START)
    if start is not None:
        axis.scatter([start[x][0]], [start[y][0]], color="black", marker="x", label="start", zorder=3)
    for index, arm in enumerate(grid.arms):
        colour = f"C{index}"
        for (name, _), path in paths.items():
            if name == arm and len(path) > 1:
                axis.plot(*zip(*path, strict=True), color=colour, alpha=0.25, linewidth=0.8, marker=".", markersize=3)
        points = [values for (name, _), values in replicated.items() if name == arm]
        if not points:
            continue
        points.sort(key=lambda values: values[x][0])
        xs, ys = [interval(p[x]) for p in points], [interval(p[y]) for p in points]
        line_x = ([start[x][0]] if start is not None else []) + [v[0] for v in xs]
        line_y = ([start[y][0]] if start is not None else []) + [v[0] for v in ys]
        dashed = arm == grid.report.get("baseline")
        axis.plot(line_x, line_y, color=colour, alpha=0.6, linestyle="--" if dashed else "-")
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
    axis.set_title(f"{grid.name}: {y} against {x} (95% bootstrap intervals; faint: along training)", fontsize=10)
    axis.legend(loc="best", fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def plot_training(grid: SweepGrid, groups: dict, y: str):
    """y of each arm's probes against its training step (its own unit: optimizer steps, PPO updates or rounds), a
    line per setting through the mean over seeds, the band from the lowest to the highest seed."""
    arms = [arm for arm in grid.arms if any(group[0] == arm for group in groups)]
    figure, axes = _panels(len(arms), columns=3, width=4.0)
    for axis, arm in zip(axes, arms, strict=True):
        settings = [(setting, records) for (name, setting), records in groups.items() if name == arm]
        for index, (setting, records) in enumerate(settings):
            by_step = probes_by_step(records, (y,))
            table = [[point[y] for point in points] for points in by_step.values()]
            _mean_and_band(axis, list(by_step), table, index, f"{setting} ({len(records)} seeds)")
        _label(axis, arm, y)
    figure.suptitle(f"{grid.name}: {y} during training (mean over seeds; band: lowest to highest seed)", fontsize=10)
    return figure


def plot_curve_claims(grid: SweepGrid, claims: list[dict], groups: dict):
    """For each curve claim, a panel per setting both arms ran: the curve of each arm against training step, the
    mean over seeds with the band from the lowest to the highest seed."""
    panels = [(claim, row["setting"]) for claim in claims for row in claim["settings"]]
    figure, axes = _panels(len(panels), columns=4, width=3.6)
    for axis, (claim, setting) in zip(axes, panels, strict=True):
        for index, role in enumerate(("baseline", "arm")):
            series = [record["details"]["curves"].get(claim["curve"], []) for record in groups[(claim[role], setting)]]
            series = [values for values in series if values]
            if series:
                steps = [step for step, _ in min(series, key=len)]
                table = [[values[i][1] for values in series] for i in range(len(steps))]
                _mean_and_band(axis, steps, table, index, f"{claim[role]} ({len(series)} seeds)")
        _label(axis, f"{claim['claim']}\n{setting}", claim["curve"])
    figure.suptitle(f"{grid.name}: mean over seeds, band from lowest to highest seed", fontsize=9)
    return figure


def _panels(count: int, columns: int, width: float):
    """A figure of `count` panels, `columns` to a row (fewer when fewer panels), and the panels in use."""
    columns = min(columns, count)
    rows = -(-count // columns)
    size = (max(5.0, width * columns), 3.2 * rows)
    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False, constrained_layout=True)
    for axis in list(axes.flat)[count:]:
        axis.set_visible(False)
    return figure, list(axes.flat)[:count]


def _mean_and_band(axis, steps: list, table: list[list[float]], index: int, label: str) -> None:
    """A line through each step's mean over the seeds (`table`: a row of seed values per step), with a band from
    the lowest seed's value to the highest's."""
    colour = f"C{index}"
    axis.plot(steps, [mean(values) for values in table], color=colour, marker=".", label=label)
    lows, highs = [min(values) for values in table], [max(values) for values in table]
    axis.fill_between(steps, lows, highs, color=colour, alpha=0.15)


def _label(axis, title: str, ylabel: str) -> None:
    axis.set_title(title, fontsize=8)
    axis.set_xlabel("step")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def save_figure(figure, path: Path) -> None:
    atomic_file(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    plt.close(figure)
