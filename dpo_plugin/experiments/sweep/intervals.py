"""Bootstrap intervals over prompts and seeds, and the comparison of two arms at a matched x (e.g. KL).

Every cell of a sweep is evaluated on the same held-out prompts with the same sampling seeds, so its per-prompt
values line up across cells. One bootstrap replicate draws the prompts once (with replacement, shared by every
group: paired, as common random numbers are) and, for each group of cells that differ only by seed, its seeds (with
replacement); a group's replicate value is the mean over the drawn seeds of the mean over the drawn prompts. The
95% interval is the 2.5 and 97.5 percentiles of the replicates.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from ...utils.errors import UserError

REPLICATES = 2000


def replicate_means(
    groups: Mapping[Hashable, Sequence[Mapping[str, Sequence[float]]]],
    metrics: Sequence[str],
    replicates: int = REPLICATES,
    seed: int = 0,
) -> dict[Hashable, dict[str, np.ndarray]]:
    """For each group (its cells' per-prompt values, one mapping metric -> values per cell), each metric its cells
    all record: its estimate (index 0: the plain mean over cells and prompts) followed by `replicates` bootstrap
    replicates."""
    counts = {len(values[metric]) for cells in groups.values() for values in cells for metric in values}
    if len(counts) != 1:
        raise UserError(
            f"the cells' per-prompt values have different lengths {sorted(counts)}: they were not "
            "evaluated on the same prompts, so they cannot share an interval."
        )
    prompts = counts.pop()
    rng = np.random.default_rng(seed)
    prompt_draws = np.vstack([np.arange(prompts), rng.integers(0, prompts, size=(replicates, prompts))])
    out = {}
    for key, cells in groups.items():
        seed_draws = np.vstack([np.arange(len(cells)), rng.integers(0, len(cells), size=(replicates, len(cells)))])
        out[key] = {}
        for metric in (metric for metric in metrics if all(metric in values for values in cells)):
            table = np.asarray([values[metric] for values in cells], dtype=float)  # (cells, prompts)
            per_cell = np.take_along_axis(table[:, None, :], prompt_draws[None, :, :], axis=2).mean(axis=2)
            out[key][metric] = np.take_along_axis(per_cell, seed_draws.T, axis=0).mean(axis=0)
    return out


def interval(replicated: np.ndarray) -> tuple[float, float, float]:
    """(estimate, low, high): the 95% percentile interval of the replicates (NaN replicates left out)."""
    values = replicated[1:][~np.isnan(replicated[1:])]
    if values.size == 0:
        return float(replicated[0]), math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(replicated[0]), float(low), float(high)


def interpolate(curve_x: np.ndarray, curve_y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per replicate (column), the piecewise-linear curve through the points (rows) at `x`, NaN outside its range.
    `curve_x`, `curve_y`: (points, replicates); `x`: (replicates,)."""
    out = np.full(x.shape, np.nan)
    for r in range(x.size):
        order = np.argsort(curve_x[:, r])
        xs, ys = curve_x[order, r], curve_y[order, r]
        if xs[0] <= x[r] <= xs[-1]:
            out[r] = np.interp(x[r], xs, ys)
    return out


def difference_at_matched_x(
    point: Mapping[str, np.ndarray], curve: Sequence[Mapping[str, np.ndarray]], x: str, y: str
) -> dict:
    """`point`'s y minus the baseline curve's y at `point`'s x (the curve: piecewise linear through its points),
    replicate by replicate; a verdict from the 95% interval: "holds" (above 0), "does not hold" (below), "not
    resolved" (spans 0, or the point lies beyond the curve's x range: then no interval, `low` and `high` NaN)."""
    curve_x = np.vstack([p[x] for p in curve])
    curve_y = np.vstack([p[y] for p in curve])
    baseline = interpolate(curve_x, curve_y, point[x])
    difference = point[y] - baseline
    estimate, low, high = interval(difference)
    row = {"x": float(point[x][0]), "y": float(point[y][0]), "baseline_y": float(baseline[0]), "difference": estimate}
    row |= {"low": low, "high": high}
    if math.isnan(estimate):  # the point itself lies beyond the curve: replicates that fall inside say nothing of it
        span = f"{curve_x[:, 0].min():.2f}–{curve_x[:, 0].max():.2f}"
        row |= {"low": math.nan, "high": math.nan}
        row["verdict"] = f"not resolved: {x} {row['x']:.2f} lies outside the baseline's range ({span})"
    elif low > 0:
        row["verdict"] = "holds"
    elif high < 0:
        row["verdict"] = "does not hold"
    else:
        row["verdict"] = "not resolved"
    return row
