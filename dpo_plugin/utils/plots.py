"""Training curves as a PNG a person looks at, written atomically."""

from pathlib import Path

import matplotlib

from .atomic import atomic_file

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

CURVES = (("loss", "loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin"))


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the up to `window − 1` values before it."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def plot_training_curves(
    log_history: list[dict], path: Path, title: str = "", window: int = 5, curves: tuple = CURVES, x_label: str = "step"
) -> None:
    """Each `(key, label)` of `curves` (default: loss, reward accuracy, reward margin) against each entry's "step"
    (labelled `x_label`), as logged (faint) and its running mean over `window` entries (bold; 1: the values alone),
    as a PNG."""
    train_logs = [entry for entry in log_history if curves[0][0] in entry and "step" in entry]
    figure, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), constrained_layout=True)
    for axis, (key, label) in zip(axes, curves, strict=True):
        points = [(entry["step"], entry[key]) for entry in train_logs if key in entry]
        if points:
            steps, values = zip(*points, strict=True)
            if window == 1:
                axis.plot(steps, values, color="tab:blue", linewidth=2, marker="o")
            else:
                axis.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=1)
                mean = running_mean(list(values), window)
                axis.plot(steps, mean, color="tab:blue", linewidth=2, label=f"running mean of {window}")
                axis.legend(loc="best", fontsize="small")
        axis.set_title(label)
        axis.set_xlabel(x_label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and rounds are whole numbers
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    atomic_file(Path(path), lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    plt.close(figure)
