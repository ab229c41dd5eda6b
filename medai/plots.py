"""PNG plots for training and evaluation reports.

Figures are made with matplotlib's object API (``Figure`` + Agg canvas), never pyplot: no global
backend is switched, so this is safe on a worker thread inside Slicer, whose own matplotlib
backend stays as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


BOUNDED_METRICS = ("dice", "accuracy", "label_accuracy", "auc", "f1", "precision", "recall")


def _integer_epochs(ax, epochs: Sequence[int]) -> None:
    """Whole-number epoch ticks (no 1.5 epochs), at most about ten of them."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)


def honest_limits(values: Sequence[float], bounded: bool = False, min_span: float = 0.1) -> tuple[float, float]:
    """Y limits that do not magnify noise: 0..1 for bounded metrics, otherwise from 0 (or the data's minimum when
    it is negative) to a little above the maximum, and never narrower than ``min_span`` of the largest value."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if bounded:
        return 0.0, 1.02
    if not vals:
        return 0.0, 1.0
    lo, hi = min(0.0, min(vals)), max(vals)
    span = max(hi - lo, min_span * max(abs(hi), abs(lo), 1e-12))
    return lo, lo + 1.08 * span


def training_curves(history: list[dict], metric_name: str, path: Path) -> Path | None:
    """Training loss and validation metric per epoch: whole-number epochs, loss from 0, bounded metrics on 0..1."""
    if not history:
        return None
    fig = training_figure(history, metric_name)
    fig.savefig(path)
    return path


def training_figure(history: list[dict], metric_name: str):
    """The figure :func:`training_curves` saves (axes: loss, then the validation metric)."""
    epochs = [r["epoch"] for r in history]
    fig, ax = _figure((6, 4))
    losses = [r["loss"] for r in history]
    lines = ax.plot(epochs, losses, "-" if len(epochs) > 1 else "o", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    ax.set_ylim(*honest_limits(losses))
    _integer_epochs(ax, epochs)
    val = [(r["epoch"], r.get(metric_name)) for r in history if r.get(metric_name) is not None and not np.isnan(r.get(metric_name))]
    if val:
        ax2 = ax.twinx()
        lines += ax2.plot([e for e, _ in val], [v for _, v in val], "o-", color="tab:orange", label=f"validation {metric_name}")
        ax2.set_ylabel(f"validation {metric_name}", color="tab:orange")
        ax2.set_ylim(*honest_limits([v for _, v in val], bounded=metric_name in BOUNDED_METRICS))
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Training")
    fig.tight_layout()
    return fig


def segmentation_metrics_plot(per_label: list[dict], rows: list[dict], path: Path) -> Path:
    """Per-label Dice (0..1) and HD95 (mm, from 0): the mean as a bar, each case as a dot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [p["label"] for p in per_label]
    fig = Figure(figsize=(max(6.0, 1.6 * len(names) + 3), 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, key, title, unit in ((axes[0], "dice", "Dice", ""), (axes[1], "hd95", "HD95", " (mm)")):
        means = [p[key] if p[key] is not None and np.isfinite(p[key]) else 0.0 for p in per_label]
        ax.bar(range(len(names)), means, color="tab:blue", alpha=0.6, label="mean over cases")
        per_case = []
        for n, p in enumerate(per_label):
            vals = [r[key] for r in rows if r["value"] == p["value"] and r[key] is not None and np.isfinite(r[key])]
            per_case += vals
            ax.plot([n] * len(vals), vals, "o", color="black", markersize=3, label="one case" if n == 0 and vals else None)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylim(*honest_limits(means + per_case, bounded=key == "dice"))
        ax.set_ylabel(title + unit)
        ax.set_title(f"{title} per label")
        ax.grid(axis="y", alpha=0.3)
        if any(t.get_label() == "one case" for t in ax.lines):
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> Path:
    """One ROC curve per class: ``{name: (fpr, tpr, auc)}``."""
    fig, ax = _figure((5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (one class against the rest)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def confusion_matrix_plot(cm: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> Path:
    """Counts with true classes in rows and predicted classes in columns."""
    cm = np.asarray(cm)
    fig, ax = _figure((1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    return path
