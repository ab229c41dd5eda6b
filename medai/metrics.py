"""Evaluation metrics on plain arrays: segmentation overlap and surface distances, classification, regression.

Conventions: masks are boolean ``[k, j, i]`` arrays, ``spacing`` is per array axis in mm (for a
:class:`~medai.geometry.Volume` pass ``volume.spacing[::-1]``). Surface distances follow MONAI:
the surface is the mask minus its face-connected erosion; HD95 is the larger of the two directed
95th percentiles; MSD (mean surface distance) is the mean over both directions' distances.
Empty masks give ``nan`` distances (Dice of two empty masks is 1).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage


# --- segmentation ------------------------------------------------------------------------------


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice overlap ``2|P&R| / (|P|+|R|)``; 1.0 when both are empty."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its erosion with face connectivity (outside the array counts as background)."""
    mask = mask.astype(bool)
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def _distances_to(surface_from: np.ndarray, surface_to: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    """Distance (mm) from every voxel of ``surface_from`` to the nearest voxel of ``surface_to``."""
    dist = ndimage.distance_transform_edt(~surface_to, sampling=None if spacing is None else list(spacing))
    return dist[surface_from].astype(np.float64)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """``hd95``, ``hd`` (maximum) and ``msd`` (symmetric mean surface distance) in mm; nan if a mask is empty."""
    sp, sr = surface(pred), surface(ref)  # each surface once, for both directions
    if not sp.any() or not sr.any():
        return {"hd95": math.nan, "hd": math.nan, "msd": math.nan}
    d_pr, d_rp = _distances_to(sp, sr, spacing), _distances_to(sr, sp, spacing)
    return {
        "hd95": float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        "hd": float(max(d_pr.max(), d_rp.max())),
        "msd": float(np.concatenate([d_pr, d_rp]).mean()),
    }


def segmentation_metrics(pred: np.ndarray, ref: np.ndarray, labels: dict[int, str], spacing: Sequence[float] | None = None,
                         voxel_ml: float = 0.001) -> list[dict]:
    """One row per label value: dice, hd95, msd (mm), predicted/reference volume (mL) and their difference."""
    rows = []
    for value, name in labels.items():
        p, r = pred == value, ref == value
        row = {"label": name, "value": int(value), "dice": dice(p, r), **surface_distances(p, r, spacing)}
        row["volume_pred_ml"] = float(p.sum()) * voxel_ml
        row["volume_ref_ml"] = float(r.sum()) * voxel_ml
        row["volume_diff_ml"] = row["volume_pred_ml"] - row["volume_ref_ml"]
        row["volume_diff_pct"] = 100.0 * row["volume_diff_ml"] / row["volume_ref_ml"] if row["volume_ref_ml"] else math.nan
        rows.append(row)
    return rows


# --- classification ----------------------------------------------------------------------------


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``m[t, p]`` counts cases of true class ``t`` predicted as ``p``."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        m[int(t), int(p)] += 1
    return m


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); nan without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def roc_curve(scores: Sequence[float], positive: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    thresholds = np.unique(scores)[::-1]
    n_pos, n_neg = max(int(positive.sum()), 1), max(int((~positive).sum()), 1)
    fpr, tpr = [0.0], [0.0]
    for t in thresholds:
        sel = scores >= t
        tpr.append(float((sel & positive).sum()) / n_pos)
        fpr.append(float((sel & ~positive).sum()) / n_neg)
    return np.array(fpr), np.array(tpr)


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/ROC AUC (one-vs-rest), macro averages and the confusion matrix.

    ``probs`` is ``(N, C)``; the predicted class is its argmax.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    per_class = []
    for c, name in enumerate(classes):
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        fn = cm[c, :].sum() - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"class": name, "precision": float(precision), "recall": float(recall), "f1": float(f1),
                          "auc": roc_auc(probs[:, c], y_true == c), "support": int(cm[c, :].sum())})
    macro = {k: float(np.nanmean([row[k] for row in per_class])) if per_class else math.nan for k in ("precision", "recall", "f1", "auc")}
    return {"accuracy": float((y_pred == y_true).mean()) if len(y_true) else math.nan, "per_class": per_class,
            "macro": macro, "confusion_matrix": cm.tolist()}


# --- regression --------------------------------------------------------------------------------


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """Mean absolute error and Pearson correlation (nan when either side is constant)."""
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    mae = float(np.abs(t - p).mean()) if t.size else math.nan
    corr = float(np.corrcoef(t, p)[0, 1]) if t.size > 1 and t.std() > 0 and p.std() > 0 else math.nan
    return {"mae": mae, "correlation": corr}


def json_ready(value):
    """The same value with NaN replaced by None (JSON has no NaN), through dicts, lists and tuples."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
