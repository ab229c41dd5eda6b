"""Scene bridge for training and evaluation (MRML + VTK only, no Qt).

* training cases from the scene: volumes with their segmentation nodes, or volumes with a class
  assigned in a table node (columns ``volume`` and ``class``);
* evaluation results into the scene: a ``vtkMRMLTableNode`` of metrics, and plot chart nodes
  (training curves, ROC curves);
* comparisons inside the scene: a segmentation node against a reference segmentation node, a
  classification table against a table of true labels.
"""

from __future__ import annotations

import math

import numpy as np
import slicer
import vtk

from ..evaluate import EvalReport, build_report, compare_segmentations
from ..training.data import Case, DataError, TrainingData
from .scene import segment_array, volume_from_node


def _segments(seg_node) -> list[tuple[str, str]]:
    seg = seg_node.GetSegmentation()
    return [(seg.GetNthSegmentID(n), seg.GetNthSegment(n).GetName()) for n in range(seg.GetNumberOfSegments())]


def labelmap_from_segmentation(seg_node, volume_node, names: list[str]) -> np.ndarray:
    """The segments as one ``[k, j, i]`` labelmap on the volume's grid: segment ``names[n]`` gets value ``n + 1``."""
    volume = volume_from_node(volume_node)
    out = np.zeros(volume.array.shape[:3], dtype=np.uint8)
    by_name = {name: sid for sid, name in _segments(seg_node)}
    for value, name in enumerate(names, start=1):
        if name in by_name:
            out[segment_array(seg_node, by_name[name], volume_node) > 0] = value
    return out


def segmentation_cases_from_scene(pairs: list[tuple], label_names: list[str] | None = None) -> TrainingData:
    """Training data from ``[(volume_node, segmentation_node), ...]``; labels are segment names (sorted, or as given)."""
    if not pairs:
        raise DataError("no volume/segmentation pairs given; pick volumes that have segmentations")
    names = label_names or sorted({name for _, seg in pairs for _, name in _segments(seg)})
    cases = []
    for volume_node, seg_node in pairs:
        volume = volume_from_node(volume_node)
        label = volume.with_array(labelmap_from_segmentation(seg_node, volume_node, names), f"{volume.name} labels")
        cases.append(Case(volume_node.GetID(), volumes=[volume], label_volume=label))
    desc = {"source": "slicer scene", "name": "Slicer scene", "cases": len(cases),
            "volumes": [v.GetName() for v, _ in pairs]}
    return TrainingData(cases, "segmentation", {n + 1: name for n, name in enumerate(names)}, description=desc, modalities=["image"])


def _table_rows(table_node) -> list[dict]:
    table = table_node.GetTable()
    cols = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    return [{cols[c]: table.GetValue(r, c).ToString() for c in range(len(cols))} for r in range(table.GetNumberOfRows())]


def classification_cases_from_table(table_node, scene=None) -> TrainingData:
    """Training data from a table with columns ``volume`` (node name or ID) and ``class`` (optional ``split``)."""
    scene = scene or table_node.GetScene()
    rows = _table_rows(table_node)
    if not rows or not {"volume", "class"} <= set(rows[0]):
        raise DataError(f"table {table_node.GetName()}: needs columns 'volume' and 'class' with one row per volume")
    classes = sorted({r["class"] for r in rows})
    cases = []
    for r in rows:
        node = scene.GetNodeByID(r["volume"]) or scene.GetFirstNodeByName(r["volume"])
        if node is None:
            raise DataError(f"table {table_node.GetName()}: no volume named {r['volume']!r} in the scene")
        cases.append(Case(node.GetID(), volumes=[volume_from_node(node)], target=float(classes.index(r["class"])),
                          split=(r.get("split") or None)))
    desc = {"source": "slicer scene table", "name": table_node.GetName(), "cases": len(cases)}
    return TrainingData(cases, "classification", classes=classes, description=desc, modalities=["image"])


# --- results into the scene --------------------------------------------------------------------


def table_node_from_rows(scene, rows: list[dict], name: str, node=None):
    """A ``vtkMRMLTableNode`` holding ``rows`` (numbers as double columns, the rest as strings)."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    table.Initialize()
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    numeric = {f: all(isinstance(r.get(f), (int, float)) and not isinstance(r.get(f), bool) for r in rows if f in r) for f in fields}
    for f in fields:
        arr = vtk.vtkDoubleArray() if numeric[f] else vtk.vtkStringArray()
        arr.SetName(f)
        for r in rows:
            v = r.get(f)
            if numeric[f]:
                arr.InsertNextValue(float("nan") if v is None else float(v))
            else:
                arr.InsertNextValue("" if v is None else str(v))
        table.AddColumn(arr)
    node.Modified()
    return node


def report_to_tables(scene, report: EvalReport, name: str = "MedAI evaluation") -> tuple:
    """Per-case and summary table nodes for an evaluation report."""
    return (table_node_from_rows(scene, report.rows, f"{name} per case"),
            table_node_from_rows(scene, report.summary_rows(), f"{name} summary"))


def plot_chart(scene, name: str, x_name: str, series: dict[str, tuple[list[float], list[float]]], y_title: str = ""):
    """A ``vtkMRMLPlotChartNode`` with one line series per entry ``{label: (x, y)}`` (tables hold the data)."""
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle(x_name)
    chart.SetYAxisTitle(y_title)
    for label, (xs, ys) in series.items():
        table = table_node_from_rows(scene, [{x_name: float(a), label: float(b)} for a, b in zip(xs, ys)], f"{name}: {label}")
        s = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", label)
        s.SetAndObserveTableNodeID(table.GetID())
        s.SetXColumnName(x_name)
        s.SetYColumnName(label)
        s.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        s.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        chart.AddAndObservePlotSeriesNodeID(s.GetID())
    return chart


def training_curves_chart(scene, history: list[dict], metric_name: str, name: str = "MedAI training"):
    """Loss and validation metric per epoch as a plot chart node."""
    epochs = [r["epoch"] for r in history]
    series = {"training loss": (epochs, [r["loss"] for r in history])}
    val = [(r["epoch"], r[metric_name]) for r in history if r.get(metric_name) is not None and not math.isnan(r[metric_name])]
    if val:
        series[f"validation {metric_name}"] = ([e for e, _ in val], [v for _, v in val])
    return plot_chart(scene, name, "epoch", series)


def roc_chart(scene, report: EvalReport, name: str = "MedAI ROC"):
    """ROC curves (one class against the rest) of a classification report as a plot chart node."""
    from ..evaluate import summarize_classification

    classes = [r["class"] for r in report.summary["per_class"]]
    _, curves = summarize_classification(report.rows, classes)
    return plot_chart(scene, name, "false positive rate", {c: (list(f), list(t)) for c, (f, t, _) in curves.items()}, "true positive rate")


# --- comparisons inside the scene --------------------------------------------------------------


def compare_segmentation_nodes(seg_node, ref_seg_node, reference_volume_node, scene=None) -> tuple[EvalReport, object]:
    """Metrics of a segmentation node against a reference segmentation node (segments matched by name).

    Both are rasterised on the reference volume's grid; returns the report and a summary table node.
    """
    scene = scene or reference_volume_node.GetScene()
    names = [n for _, n in _segments(ref_seg_node)]
    if not names:
        raise DataError(f"{ref_seg_node.GetName()}: the reference segmentation has no segments")
    volume = volume_from_node(reference_volume_node)
    pred = volume.with_array(labelmap_from_segmentation(seg_node, reference_volume_node, names))
    ref = volume.with_array(labelmap_from_segmentation(ref_seg_node, reference_volume_node, names))
    rows = compare_segmentations(pred, ref, {n + 1: name for n, name in enumerate(names)}, seg_node.GetName())
    report = build_report("segmentation", rows, None, None)
    return report, table_node_from_rows(scene, report.summary_rows(), f"{seg_node.GetName()} vs {ref_seg_node.GetName()}")


def compare_classification_tables(pred_table, truth_table, scene=None) -> tuple[EvalReport, object]:
    """A table of predictions (``volume``, ``class`` and optional ``p_<class>`` columns) against true labels."""
    scene = scene or pred_table.GetScene()
    truth = {r["volume"]: r["class"] for r in _table_rows(truth_table)}
    rows = []
    for r in _table_rows(pred_table):
        if r.get("volume") not in truth:
            raise DataError(f"{pred_table.GetName()}: volume {r.get('volume')!r} has no true label in {truth_table.GetName()}")
        row = {"case": r["volume"], "true": truth[r["volume"]], "predicted": r["class"]}
        row.update({k: float(v) for k, v in r.items() if k.startswith("p_") and v != ""})
        rows.append(row)
    classes = sorted({r["true"] for r in rows} | {r["predicted"] for r in rows})
    report = build_report("classification", rows, classes, None)
    return report, table_node_from_rows(scene, report.summary_rows(), f"{pred_table.GetName()} vs {truth_table.GetName()}")


# --- the Train section's inputs and outputs ----------------------------------------------------

REFERENCE_ROLE = "referenceImageGeometryRef"  # vtkMRMLSegmentationNode::GetReferenceImageGeometryReferenceRole()


def segmentation_pairs_in_scene(scene) -> list[tuple]:
    """``(volume node, segmentation node)`` for every segmentation whose reference geometry is a scalar volume.

    These are the pairs the Train section offers: a segmentation drawn on a volume in Segment
    Editor references that volume. Segmentations without segments are left out.
    """
    pairs = []
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        seg = scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode")
        volume = seg.GetNodeReference(REFERENCE_ROLE)
        if volume is not None and volume.IsA("vtkMRMLScalarVolumeNode") and seg.GetSegmentation().GetNumberOfSegments():
            pairs.append((volume, seg))
    return pairs


def history_table(scene, history: list[dict], metric_name: str, name: str = "MedAI training metrics"):
    """The per-epoch training history (epoch, loss, validation metric, learning rate, time) as a table node."""
    keys = ("epoch", "loss", metric_name, "lr", "samples_per_s", "time_s")
    rows = [{k: r.get(k) for k in keys if k in r} for r in history]
    return table_node_from_rows(scene, rows, name)
