"""Evaluation: run a model on labelled cases (or take predictions from files) and compare with references.

Writes ``per_case.csv``, ``summary.csv``, ``metrics.json`` and plots (per-label Dice and HD95 for
segmentation, ROC curves and confusion matrix for classification) into a report folder. Segmentation runs through the normal engine
(:func:`medai.engine.segment.segment`), so what is measured is what a user gets.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .engine.progress import CancelToken
from .engine.segment import segment
from .geometry import Volume, same_grid
from .io import read_image
from .metrics import classification_metrics, json_ready, regression_metrics, roc_curve, segmentation_metrics
from .models.loader import LoadedModel, load_model
from .resample import resample_volume_to

log = logging.getLogger(__name__)

SEG_SUMMARY_KEYS = ("dice", "hd95", "msd", "volume_diff_ml", "volume_diff_pct")


@dataclass
class EvalReport:
    """Per-case rows, a summary, and (classification) the confusion matrix and ROC curves."""

    task: str
    rows: list[dict]
    summary: dict
    files: list[Path] = field(default_factory=list)

    def card_metrics(self) -> dict:
        """The summary in the shape a card's ``training.metrics.test`` holds."""
        return {"cases": self.summary.get("cases"), **{k: v for k, v in self.summary.items() if k != "cases"}}

    def summary_rows(self) -> list[dict]:
        if self.task == "segmentation":
            return list(self.summary["per_label"])
        if self.task == "classification":
            rows = [dict(r) for r in self.summary["per_class"]]
            rows.append({"class": "macro average", **self.summary["macro"], "support": self.summary["cases"]})
            rows.append({"class": "accuracy", "precision": self.summary["accuracy"], "support": self.summary["cases"]})
            return rows
        return [dict(self.summary)]


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else math.nan


def summarize_segmentation(rows: list[dict]) -> dict:
    """Mean (ignoring undefined distances) of each metric per label, over cases."""
    labels = sorted({(r["value"], r["label"]) for r in rows})
    per_label = []
    for value, name in labels:
        mine = [r for r in rows if r["value"] == value]
        per_label.append({"label": name, "value": value, "cases": len(mine), **{k: _nanmean([r[k] for r in mine]) for k in SEG_SUMMARY_KEYS}})
    return {"cases": len({r["case"] for r in rows}), "per_label": per_label,
            "mean_dice": _nanmean([p["dice"] for p in per_label]), "mean_hd95": _nanmean([p["hd95"] for p in per_label])}


def compare_segmentations(pred: Volume, ref: Volume, labels: dict[int, str], case: str = "case") -> list[dict]:
    """Per-label metrics of a predicted labelmap against a reference (resampled onto the reference grid if needed)."""
    if not same_grid(pred, ref):
        log.info("%s: resampling the prediction onto the reference grid (nearest neighbour)", case)
        pred = resample_volume_to(pred, ref, linear=False)
    rows = segmentation_metrics(np.asarray(pred.array), np.asarray(ref.array), labels, spacing=ref.spacing[::-1], voxel_ml=ref.voxel_volume_ml)
    return [{"case": case, **r} for r in rows]


def classify_volumes(model: LoadedModel, volumes: list[Volume]) -> np.ndarray:
    """Class probabilities (or regression output) for one case, through the classification engine itself."""
    from .engine.classify import classify

    return classify(model, volumes, explain=False).cases[0].scores


def card_classes(model: LoadedModel) -> list[str]:
    """The model's class names as the classification engine reads them (any card form, bundles too)."""
    from .engine.classify import output_spec

    return list(output_spec(model).names)


def summarize_classification(rows: list[dict], classes: list[str]) -> tuple[dict, dict]:
    """Summary metrics and ROC curves from per-case rows holding ``true``, ``predicted`` and ``p_<class>``."""
    y_true = [classes.index(r["true"]) for r in rows]
    probs = np.array([[r.get(f"p_{c}", 1.0 if r["predicted"] == c else 0.0) for c in classes] for r in rows], dtype=np.float64)
    out = classification_metrics(y_true, probs, classes)
    curves = {}
    for n, c in enumerate(classes):
        positive = np.array(y_true) == n
        if positive.any() and (~positive).any():
            fpr, tpr = roc_curve(probs[:, n], positive)
            curves[c] = (fpr, tpr, out["per_class"][n]["auc"])
    return {"cases": len(rows), **out}, curves


def evaluate_model(model_spec, data, ids: list[str] | None = None, out_dir: Path | None = None, device: str = "auto",
                   cancel: CancelToken | None = None, progress: Callable[[float, str], None] | None = None,
                   trust: bool = False) -> EvalReport:
    """Run ``model_spec`` on the cases ``ids`` of ``data`` (a :class:`~medai.training.data.TrainingData`) and compare."""
    model = model_spec if isinstance(model_spec, LoadedModel) else load_model(model_spec, device, trust=trust)
    cancel = cancel or CancelToken()
    cases = data.by_id()
    chosen = [cases[i] for i in (ids if ids is not None else list(cases))]
    task = model.card.task
    rows: list[dict] = []
    for n, case in enumerate(chosen):
        cancel.check()
        if progress:
            progress(n / max(len(chosen), 1), f"case {case.id}")
        volumes = case.load_volumes()
        if task == "segmentation":
            ref = case.load_label()
            if ref is None:
                raise ValueError(f"case {case.id}: no reference label to compare with")
            result = segment(model, volumes, cancel=cancel)
            labels = {lab.value: lab.name for lab in model.card.labels}
            pred = volumes[0].with_array(result.labelmap().astype(np.int16))
            rows += compare_segmentations(pred, ref, labels, case.id)
        else:
            if task not in ("classification", "regression"):
                raise ValueError(f"evaluating {task} models is not supported yet; evaluate classification or regression models")
            out = classify_volumes(model, volumes)
            if task == "classification":
                classes = card_classes(model) or [f"class {i}" for i in range(len(out))]
                truth = data.classes[int(case.target)] if data.classes else classes[int(case.target)]
                row = {"case": case.id, "true": truth, "predicted": classes[int(np.argmax(out))]}
                row.update({f"p_{c}": float(p) for c, p in zip(classes, out)})
            else:
                row = {"case": case.id, "true": float(case.target), "predicted": float(out[0])}
            rows.append(row)
    report = build_report(task, rows, card_classes(model) if task == "classification" else None, out_dir)
    if progress:
        progress(1.0, "done")
    return report


def build_report(task: str, rows: list[dict], classes: list[str] | None, out_dir: Path | None) -> EvalReport:
    """Summarise per-case rows and write the report files when ``out_dir`` is given."""
    curves: dict = {}
    if task == "segmentation":
        summary = summarize_segmentation(rows)
    elif task == "classification":
        classes = classes or sorted({r["true"] for r in rows} | {r["predicted"] for r in rows})
        summary, curves = summarize_classification(rows, classes)
    else:
        summary = {"cases": len(rows), **regression_metrics([r["true"] for r in rows], [r["predicted"] for r in rows])}
    report = EvalReport(task, rows, summary)
    if out_dir is not None:
        write_report(report, Path(out_dir), classes, curves)
    return report


def _write_csv(rows: list[dict], path: Path) -> Path:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def write_report(report: EvalReport, out_dir: Path, classes: list[str] | None = None, curves: dict | None = None) -> None:
    from . import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    report.files.append(_write_csv(report.rows, out_dir / "per_case.csv"))
    report.files.append(_write_csv(report.summary_rows(), out_dir / "summary.csv"))
    (out_dir / "metrics.json").write_text(json.dumps(json_ready(report.summary), indent=1))
    report.files.append(out_dir / "metrics.json")
    if report.task == "segmentation" and report.summary.get("per_label"):
        report.files.append(plots.segmentation_metrics_plot(report.summary["per_label"], report.rows, out_dir / "segmentation_metrics.png"))
    if report.task == "classification" and classes:
        report.files.append(plots.confusion_matrix_plot(report.summary["confusion_matrix"], classes, out_dir / "confusion_matrix.png"))
        if curves:
            report.files.append(plots.roc_curves(curves, out_dir / "roc_curves.png"))


# --- predictions already on disk ----------------------------------------------------------------


def evaluate_label_files(pred_paths: list[Path], ref_paths: list[Path], labels: dict[int, str] | None = None,
                         out_dir: Path | None = None) -> EvalReport:
    """Compare predicted labelmap files with reference labelmap files, pairwise."""
    if len(pred_paths) != len(ref_paths):
        raise ValueError(f"{len(pred_paths)} prediction(s) but {len(ref_paths)} reference(s); give them in pairs")
    rows: list[dict] = []
    for p, r in zip(pred_paths, ref_paths):
        pred, ref = read_image(p), read_image(r)
        names = labels or {int(v): f"label {int(v)}" for v in np.union1d(np.unique(pred.array), np.unique(ref.array)) if v > 0}
        rows += compare_segmentations(pred, ref, names, ref.name)
    return build_report("segmentation", rows, None, out_dir)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def evaluate_prediction_csv(pred_csv: Path, ref_csv: Path, out_dir: Path | None = None, task: str = "classification") -> EvalReport:
    """Compare a CSV of predictions (``case``/``image``, ``predicted`` or ``label``, optional ``p_<class>``) with a truth CSV."""
    preds, refs = _read_csv(pred_csv), _read_csv(ref_csv)

    def key(r: dict) -> str:
        v = r.get("case") or r.get("id") or r.get("image") or ""
        return Path(v).name if os.sep in v or "/" in v else v

    def value(r: dict, path: Path) -> str:
        for col in ("predicted", "label", "class", "target", "true"):
            if col in r:
                return r[col].strip()
        raise ValueError(f"{path}: needs a 'predicted', 'label' or 'class' column")

    truth = {key(r): value(r, ref_csv) for r in refs}
    rows = []
    for r in preds:
        k = key(r)
        if k not in truth:
            raise ValueError(f"{pred_csv}: case {k!r} is not in {ref_csv}")
        if task == "regression":
            rows.append({"case": k, "true": float(truth[k]), "predicted": float(value(r, pred_csv))})
        else:
            row = {"case": k, "true": truth[k], "predicted": value(r, pred_csv)}
            row.update({c: float(v) for c, v in r.items() if c.startswith("p_") and v not in ("", None)})
            rows.append(row)
    classes = None
    if task == "classification":
        classes = sorted({r["true"] for r in rows} | {r["predicted"] for r in rows} | {c[2:] for r in rows for c in r if c.startswith("p_")})
    return build_report(task, rows, classes, out_dir)
