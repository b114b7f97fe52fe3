"""Claims about the shape of a training-log curve (e.g. IPO's implicit-reward margin stays bounded where DPO's keeps
growing, Azar et al. 2023 §4.2), read from the curves the cells keep (`details.curves`: name -> [[step, value], ...]).

A curve's growth is its value at the end (the mean of its last tenth of logged values) minus its value half-way (the
mean of the tenth around the middle). For a claim "`arm`'s curve grows less than `baseline`'s", each setting both arms
ran is compared seed by seed (the same seed: the same data order and initialisation), the baseline's growth minus the
arm's; the 95% interval is the t interval of the mean of those paired differences over the seeds (n − 1 degrees of
freedom). holds: it lies above 0; does not hold: below; not resolved: it spans 0, or fewer than 2 seeds pair up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import mean, stdev

from scipy import stats


def half_and_end(values: Sequence[float]) -> tuple[float, float]:
    """(the mean of the tenth of `values` around the middle, the mean of the last tenth); at least one value each."""
    tail, half = max(1, len(values) // 10), len(values) // 2
    return mean(values[max(0, half - tail) : half + 1]), mean(values[-tail:])


def curve_claim(claim: dict, groups: dict) -> dict:
    """`claim` (`claim`, `curve`, `arm`, `baseline`) read at each setting both arms ran: per setting, each arm's mean
    growth and end value over its seeds, and the paired difference (baseline − arm) with its interval and verdict."""
    curve, rows = claim["curve"], []
    settings = [setting for arm, setting in groups if arm == claim["arm"] and (claim["baseline"], setting) in groups]
    for setting in settings:
        seeds = {role: _by_seed(groups[(claim[role], setting)], curve) for role in ("arm", "baseline")}
        paired = sorted(set(seeds["arm"]) & set(seeds["baseline"]))
        differences = [seeds["baseline"][seed][0] - seeds["arm"][seed][0] for seed in paired]
        row = {"setting": setting, "seeds": paired}
        for role in ("arm", "baseline"):
            row[f"{role} growth"] = mean(seeds[role][seed][0] for seed in paired) if paired else math.nan
            row[f"{role} end"] = mean(seeds[role][seed][1] for seed in paired) if paired else math.nan
        row |= _t_interval(differences)
        rows.append(row)
    return claim | {"settings": rows}


def _by_seed(records: list[dict], curve: str) -> dict[int, tuple[float, float]]:
    """seed -> (growth, end value) of each cell that logged `curve`."""
    out = {}
    for record in records:
        values = [value for _, value in record.get("details", {}).get("curves", {}).get(curve, [])]
        if values:
            half, end = half_and_end(values)
            out[record["seed"]] = (end - half, end)
    return out


def _t_interval(differences: list[float]) -> dict:
    if len(differences) < 2:
        centre = mean(differences) if differences else math.nan
        verdict = f"not resolved: {len(differences)} seed(s) pair up, 2 are needed"
        return {"difference": centre, "low": math.nan, "high": math.nan, "verdict": verdict}
    centre = mean(differences)
    half_width = stats.t.ppf(0.975, len(differences) - 1) * stdev(differences) / math.sqrt(len(differences))
    low, high = centre - half_width, centre + half_width
    verdict = "holds" if low > 0 else "does not hold" if high < 0 else "not resolved"
    return {"difference": centre, "low": low, "high": high, "verdict": verdict}
