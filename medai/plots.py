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


def training_curves(history: list[dict], metric_name: str, path: Path) -> Path | None:
    """Training loss and validation metric per epoch."""
    if not history:
        return None
    epochs = [r["epoch"] for r in history]
    fig, ax = _figure((6, 4))
    ax.plot(epochs, [r["loss"] for r in history], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:blue")
    val = [(r["epoch"], r.get(metric_name)) for r in history if r.get(metric_name) is not None and not np.isnan(r.get(metric_name))]
    if val:
        ax2 = ax.twinx()
        ax2.plot([e for e, _ in val], [v for _, v in val], "o-", color="tab:orange", label=f"validation {metric_name}")
        ax2.set_ylabel(f"validation {metric_name}", color="tab:orange")
    ax.set_title("Training")
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
