"""The comparison's outputs: `comparison.md` (tables a paper would print), `comparison.json`, and the PNGs.

Plots: held-out preference accuracy over training (each method, x = fraction of its run); gold reward against
sampled KL(π_θ ‖ π_ref) for every run (the DPO paper's frontier: DPO across β, PPO across KL coefficients); DPO
against IPO over training on deterministic preferences (implicit-reward margin and sampled KL).
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean

import matplotlib

from ...utils.atomic import atomic_file, write_json
from .claims import probe_frontier, seed_mean

Z95 = 1.959964  # the 95% quantile of the standard normal, for intervals of a mean
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"dpo": "tab:blue", "ipo": "tab:orange", "tdpo1": "tab:purple", "tdpo2": "tab:green", "ppo": "tab:red"}
OBJECTIVE_LABELS = {"dpo": "DPO", "ipo": "IPO", "tdpo1": "TDPO1", "tdpo2": "TDPO2"}
LABELS = OBJECTIVE_LABELS | {"ppo": "RM + PPO", "reference": "reference"}
# online arms, "online-<objective>/<ranker>": the ranker's name in labels, a colour per arm in listed order
RANKER_LABELS = {"gold": "gold labeller", "reward_model": "reward model"}
ONLINE_COLOURS = ("tab:cyan", "tab:olive", "tab:pink", "tab:brown", "tab:grey", "navy")


def label(method: str) -> str:
    """What the report calls a method: `LABELS`, or "online DPO (gold labeller)" for the arm online-dpo/gold."""
    if method.startswith("online-"):
        objective, _, ranker = method.removeprefix("online-").partition("/")
        return f"online {OBJECTIVE_LABELS[objective]} ({RANKER_LABELS[ranker]})"
    return LABELS[method]


def colour(method: str, methods: list[str]) -> str:
    """`COLOURS`, or for an online arm one of `ONLINE_COLOURS` by its place among the online arms of `methods`."""
    if method.startswith("online-"):
        arms = [name for name in dict.fromkeys(methods) if name.startswith("online-")]
        return ONLINE_COLOURS[arms.index(method) % len(ONLINE_COLOURS)]
    return COLOURS[method]


def write_report(output_dir: Path, report: dict) -> list[Path]:
    """Write comparison.json, comparison.md and the plots into `output_dir`; returns the paths written."""
    output_dir = Path(output_dir)
    paths = [output_dir / "comparison.json", output_dir / "comparison.md"]
    write_json(paths[0], report)
    atomic_file(paths[1], lambda temporary: Path(temporary).write_text(markdown(report)))
    paths.append(_save(plot_accuracy_over_training(report["runs"]), output_dir / "accuracy_over_training.png"))
    first_seed = report["setup"]["config"]["seeds"][0]
    frontier = plot_frontier(
        [run for run in report["runs"] if run["seed"] == first_seed] + report["sweep"], report["reference"]
    )
    paths.append(_save(frontier, output_dir / "frontier.png"))
    paths.append(_save(plot_frontier_over_training(report["runs"]), output_dir / "frontier_over_training.png"))
    if report.get("claims", {}).get("dpo_vs_ipo", {}).get("runs"):
        claim = report["claims"]["dpo_vs_ipo"]
        paths.append(_save(plot_dpo_versus_ipo(claim), output_dir / "dpo_vs_ipo.png"))
    return paths


def _save(figure, path: Path) -> Path:
    atomic_file(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    plt.close(figure)
    return path


def summarize(runs: list[dict]) -> list[dict]:
    """One row per method over its seeds: means, and the spread (max − min) across seeds where there are several."""
    rows = []
    for method in dict.fromkeys(run["method"] for run in runs):
        group = [run for run in runs if run["method"] == method]
        values = {
            "accuracy": [run["accuracy"]["value"] for run in group],
            "reward_model": [run["samples"]["rewards"]["reward_model"] for run in group],
            "gold": [run["samples"]["rewards"]["gold_sentiment"] for run in group],
            "kl": [run["samples"]["kl"] for run in group],
            "seconds": [run["train_seconds"] for run in group],
        }
        row = {"method": method, "seeds": len(group), "strength": group[0]["strength"], "steps": group[0]["steps"]}
        row.update({name: mean(series) for name, series in values.items()})
        row.update({f"{name}_spread": max(series) - min(series) for name, series in values.items()})
        for name, key in (("gold", "gold_sentiment"), ("kl", "kl")):
            errors = [run["samples"].get("standard_errors", {}).get(key, 0.0) for run in group]
            _, error = seed_mean(values[name], errors)
            row[f"{name}_interval"] = [row[name] - Z95 * error, row[name] + Z95 * error]
        low, high = group[0]["accuracy"]["low"], group[0]["accuracy"]["high"]
        row["accuracy_interval"] = [low, high] if len(group) == 1 else None
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    """The comparison as Markdown: setup, main table, frontier runs, claims, implementation complexity."""
    setup = report["setup"]
    methods = [label(method) for method in dict.fromkeys(run["method"] for run in report["runs"])]
    lines = [
        f"# {' and '.join([', '.join(methods[:-1]), methods[-1]] if len(methods) > 1 else methods)}: the same labels",
        "",
        f"Device: {setup['device']}. Total wall time {setup['total_seconds'] / 60:.1f} min. Command: "
        f"`{setup['command']}`.",
        "",
        f"Data: `sentiment-generation`, {setup['train_pairs']} training pairs and {setup['eval_pairs']} held-out pairs "
        f"(prompts: 2–8-word prefixes of Pang & Lee review sentences; completions sampled from the reference; chosen = "
        f"the sample the gold classifier rates more positive). Gold sentiment classifier: {setup['gold_classifier']}.",
        f"Reward model (Bradley–Terry, TRL RewardTrainer, from the reference checkpoint): held-out pairwise accuracy "
        f"{_percent(report['reward_model']['accuracy'])}, trained in {report['reward_model']['train_seconds']:.0f} s.",
        "",
        "## Held-out results",
        "",
        f"Preference accuracy: the policy's implicit reward log π_θ/π_ref ranks {setup['eval_pairs']} held-out pairs. "
        f"RM score, gold reward (P(positive) of prompt + completion) and KL(π_θ ‖ π_ref) (nats, Σ over the sampled "
        f"tokens) are means over one sampled completion for each of {setup['eval_prompts']} held-out prompts. "
        "± is the spread (max − min) across seeds; with one seed, the accuracy's [ ] is its 95% Wilson interval. "
        "Gold reward and KL carry a 95% interval: 1.96·√(s²/S + mean SE²/S), from the spread between the S seeds and "
        "each run's standard error over its prompts.",
        "",
        "Steps are optimizer steps for the preference objectives (online arms: over all rounds, whose train time "
        "holds their sampling and ranking too) and PPO updates (one rollout each) for RM + PPO, whose train time "
        "leaves out the reward model's (above).",
        "",
        "| method | β / KL coef. | seeds | steps | preference acc. | RM score | gold reward | KL | train time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    reference = report["reference"]
    lines.append(
        f"| reference | – | – | 0 | – | {reference['rewards']['reward_model']:.3f} | "
        f"{reference['rewards']['gold_sentiment']:.3f} | 0 | – |"
    )
    for row in summarize(report["runs"]):
        lines.append(_table_row(row))
    if report["sweep"]:
        lines += ["", "## Frontier runs (first seed)", ""]
        lines += ["| method | β / KL coef. | gold reward | KL | preference acc. |", "|---|---|---|---|---|"]
        for run in sorted(report["sweep"], key=lambda run: (run["method"], run["strength"])):
            lines.append(
                f"| {label(run['method'])} | {run['strength']:g} | {run['samples']['rewards']['gold_sentiment']:.3f} |"
                f" {run['samples']['kl']:.2f} | {100 * run['accuracy']['value']:.1f}% |"
            )
    lines += ["", "## Claims from the papers", ""]
    for name, claim in report.get("claims", {}).items():
        lines += [
            f"**{name}**: {claim['claim']}",
            "",
            f"Rule: {claim.get('rule', '–')}. Result: "
            f"{'consistent' if claim.get('consistent') else 'not consistent'} with the claim.",
            "",
        ]
        if "summary" in claim:
            lines.append("| objective | margin half-way | margin at end | sampled KL at end | gold reward |")
            lines.append("|---|---|---|---|---|")
            for objective, values in claim["summary"].items():
                lines.append(
                    f"| {LABELS[objective]} | {values['margin_half']:.3f} | {values['margin_end']:.3f} | "
                    f"{values['kl_end']:.2f} | {values['gold_end']:.3f} |"
                )
            lines.append("")
        if "arms" in claim:
            lines.append("| online arm (final round) | KL | gold reward | offline DPO's gold at that KL | difference |")
            lines.append("|---|---|---|---|---|")
            for arm, row in claim["arms"].items():
                gold = f"{row['gold']:.3f} ± {Z95 * row['gold_se']:.3f}"
                offline, difference = "–", row["verdict"]
                if "difference" in row:
                    low, high = row["interval"]
                    offline = f"{row['offline_gold']:.3f}"
                    difference = f"{row['difference']:+.3f} [{low:+.3f}, {high:+.3f}]: {row['verdict']}"
                lines.append(f"| {label(arm)} | {row['kl']:.2f} | {gold} | {offline} | {difference} |")
            lines.append("")
        if "stats" in claim:
            for method, values in claim["stats"].items():
                lines.append(
                    f"- {label(method)}: KL {values['kl']:.2f}, gold {values['gold']:.3f} ({values['seeds']} seed(s))"
                )
            lines.append("")
    lines += [
        "## Implementation complexity",
        "",
        "| method | lines of method-specific code | models in memory | generation passes per update |",
        "|---|---|---|---|",
    ]
    for row in report["complexity"]:
        lines.append(f"| {row['method']} | {row['lines']} ({row['counted']}) | {row['models']} | {row['generation']} |")
    plots = ("accuracy_over_training", "frontier", "frontier_over_training", "dpo_vs_ipo")
    lines += ["", "Plots: " + ", ".join(f"`{plot}.png`" for plot in plots) + ".", ""]
    return "\n".join(lines)


def _table_row(row: dict) -> str:
    def cell(name: str, fmt: str) -> str:
        value = format(row[name], fmt)
        return value if row["seeds"] == 1 else f"{value} ± {format(row[name + '_spread'], fmt)}"

    def interval(name: str, fmt: str) -> str:
        low, high = row[f"{name}_interval"]
        return f"{format(row[name], fmt)} [{format(low, fmt)}, {format(high, fmt)}]"

    if row["seeds"] == 1 and row["accuracy_interval"]:
        low, high = row["accuracy_interval"]
        accuracy = f"{100 * row['accuracy']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"
    else:
        accuracy = f"{100 * row['accuracy']:.1f}% ± {100 * row['accuracy_spread']:.1f}"
    return (
        f"| {label(row['method'])} | {row['strength']:g} | {row['seeds']} | {row['steps']} | {accuracy} | "
        f"{cell('reward_model', '.3f')} | {interval('gold', '.3f')} | {interval('kl', '.2f')} | "
        f"{row['seconds']:.0f} s |"
    )


def _percent(accuracy: dict) -> str:
    return f"{100 * accuracy['value']:.1f}% [{100 * accuracy['low']:.1f}, {100 * accuracy['high']:.1f}]"


def plot_accuracy_over_training(runs: list[dict]):
    """Held-out preference accuracy at each probe, x = fraction of the run's steps; one line per run."""
    figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    labelled, methods = set(), [run["method"] for run in runs]
    for run in (run for run in runs if run["probes"]):
        last = max(1, run["probes"][-1]["step"])  # optimizer steps, PPO updates, or an online arm's rounds
        x, y = zip(*[(probe["step"] / last, probe["accuracy"]) for probe in run["probes"]], strict=True)
        name = None if run["method"] in labelled else label(run["method"])
        labelled.add(run["method"])
        axis.plot(x, y, marker="o", color=colour(run["method"], methods), label=name, alpha=0.8)
    axis.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("fraction of training")
    axis.set_ylabel("held-out preference accuracy (implicit reward)")
    axis.set_title("Preference accuracy over training")
    axis.legend(loc="best")
    axis.grid(alpha=0.3)
    return figure


def plot_frontier(runs: list[dict], reference: dict):
    """Gold reward against sampled KL(π_θ ‖ π_ref) for every run, the reference at KL 0."""
    figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    axis.scatter([0.0], [reference["rewards"]["gold_sentiment"]], color="black", marker="x", label="reference")
    runs_by = dict.fromkeys(run["method"] for run in runs)
    for method in runs_by:
        group = sorted((run for run in runs if run["method"] == method), key=lambda run: run["samples"]["kl"])
        x = [run["samples"]["kl"] for run in group]
        y = [run["samples"]["rewards"]["gold_sentiment"] for run in group]
        style = {"marker": "o", "linestyle": "--" if len(group) > 1 else "", "color": colour(method, list(runs_by))}
        axis.plot(x, y, label=label(method), **style)
        for run, kl, gold in zip(group, x, y, strict=True):
            axis.annotate(f"{run['strength']:g}", (kl, gold), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axis.set_xlabel("KL(π_θ ‖ π_ref), nats per completion (sampled)")
    axis.set_ylabel("gold reward (P(positive))")
    axis.set_title("Reward against KL (labels: β or KL coefficient)")
    axis.legend(loc="best")
    axis.grid(alpha=0.3)
    return figure


def plot_frontier_over_training(runs: list[dict]):
    """Gold reward against sampled KL at each probe of each method, the mean over its seeds with 95% intervals
    (`claims.probe_frontier`): offline runs by optimizer step, online arms by round, the reference at the start."""
    figure, axis = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    methods = [run["method"] for run in runs]
    for method in dict.fromkeys(methods):
        group = [run["probes"] for run in runs if run["method"] == method]
        points = probe_frontier(group)
        x, y = [point["kl"] for point in points], [point["gold"] for point in points]
        axis.errorbar(
            x,
            y,
            xerr=[Z95 * point["kl_se"] for point in points],
            yerr=[Z95 * point["gold_se"] for point in points],
            marker="o",
            capsize=2,
            color=colour(method, methods),
            label=f"{label(method)} ({len(group)} seed{'s' * (len(group) > 1)})",
        )
    axis.set_xlabel("KL(π_θ ‖ π_ref), nats per completion (sampled)")
    axis.set_ylabel("gold reward (P(positive))")
    axis.set_title("Reward against KL over training (online: after each round)")
    axis.legend(loc="best", fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def plot_dpo_versus_ipo(claim: dict):
    """Implicit-reward margin per logged step and sampled KL per probe, DPO against IPO at the same β."""
    figure, (margins, kls) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for objective, run in claim["runs"].items():
        steps, values = zip(*run["curves"]["rewards/margins"], strict=True)
        margins.plot(steps, values, color=COLOURS[objective], label=LABELS[objective])
        probes = [(probe["step"], probe["kl"]) for probe in run["probes"]]
        kls.plot(*zip(*probes, strict=True), marker="o", color=COLOURS[objective], label=LABELS[objective])
    margins.axhline(claim["ipo_target_margin"], color="tab:orange", linestyle=":", label="IPO target β/(2β)")
    margins.set_title(f"implicit-reward margin, β = {claim['beta']:g}")
    kls.set_title("sampled KL(π_θ ‖ π_ref) on held-out prompts")
    for axis in (margins, kls):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(loc="best")
    figure.suptitle("Deterministic preferences (sentiment-pairs): DPO against IPO")
    return figure
