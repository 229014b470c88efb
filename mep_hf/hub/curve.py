"""``training_curve.png``: the training loss and validation metric of a run, from its ``log_history``."""

from __future__ import annotations

import math
from pathlib import Path

from ..tasks import Task
from .runs import Run
from .specs import metric_name

CURVE_FILE = "training_curve.png"


def _curve_points(log_history: list[dict], metric: str):
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    key = f"eval_{metric}"
    evals = [(h["step"], h[key]) for h in log_history if key in h and "step" in h]
    if not evals and metric == "bits_per_char":  # derive bits/char from the logged nats when only those exist
        evals = [(h["step"], h["eval_loss"] / math.log(2)) for h in log_history if "eval_loss" in h]
    return train, evals


def plot_curve(run: Run, task: Task, png: Path, baseline: Run | None) -> bool:
    """Draw ``training_curve.png`` from the run's ``log_history``; False when the run logged nothing."""
    return plot_training_curve(run.log_history, png, task.zoo_metrics[0], run.path.name,
                               baseline.log_history if baseline is not None else None)


def plot_training_curve(log_history: list[dict], png: str | Path, metric: str, title: str,
                        baseline_history: list[dict] | None = None) -> bool:
    """Training loss and validation ``metric`` against the step, from a Trainer's ``state.log_history`` (a
    backprop run's validation curve beside it when given), as a PNG. False when nothing was logged."""
    train, evals = _curve_points(log_history, metric)
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if train:
        ax.plot(*zip(*train), color="tab:blue", lw=1, label="training loss (EP run)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals), "o-", color="tab:red", label=f"validation {metric_name(metric)} (EP)")
        if baseline_history is not None:
            bp = _curve_points(baseline_history, metric)[1]
            if bp:
                ax2.plot(*zip(*bp), "s--", color="tab:gray", label=f"validation {metric_name(metric)} (backprop)")
        ax2.set_ylabel(f"validation {metric_name(metric)}")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True
