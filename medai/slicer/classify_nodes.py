"""MRML output nodes of a classification: scores table, bar chart, heatmap overlay, findings table and markups.

Imports only Slicer's MRML API and VTK. Every function creates its nodes from a complete
result, so the scene changes only when a run succeeded.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from ..engine.classify import CaseResult, ClassificationResult
from ..explain.localize import Finding
from .scene import _numpy_to_matrix, node_ijk_to_ras

# Preferred heatmap colour maps: Slicer's file-based ones when loaded (full application), else built-in ones.
HEATMAP_COLORMAPS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
                     "vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeRainbow")


def _column(table, cls: str, name: str, values) -> None:
    arr = getattr(vtk, cls)()
    arr.SetName(name)
    for v in values:
        arr.InsertNextValue(v)
    table.AddColumn(arr)


def scores_table_node(scene, result: ClassificationResult, name: str | None = None):
    """One row per class (sorted by score) for one case; one row per volume with every class's score for a cohort."""
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name or f"{result.model_name} scores")
    score_name = "score" if result.task == "regression" else "probability"
    if len(result.cases) == 1:
        ranking = result.ranking(result.cases[0])
        _column(node, "vtkStringArray", "class", [r[0] for r in ranking])
        _column(node, "vtkDoubleArray", score_name, [r[1] for r in ranking])
        if result.task != "regression":
            _column(node, "vtkStringArray", "predicted", ["yes" if r[2] else "" for r in ranking])
        if result.unit:
            node.SetColumnUnitLabel(score_name, result.unit)
    else:
        _column(node, "vtkStringArray", "volume", [c.name for c in result.cases])
        _column(node, "vtkStringArray", "predicted", [";".join(result.predicted_names(c)) for c in result.cases])
        for n, cls in enumerate(result.class_names):
            _column(node, "vtkDoubleArray", cls, [float(c.scores[n]) for c in result.cases])
            if result.unit:
                node.SetColumnUnitLabel(cls, result.unit)
    predicted = sorted({p for c in result.cases for p in result.predicted_names(c)})
    node.SetAttribute("MedAI.Model", result.model_name)
    node.SetAttribute("MedAI.Task", result.task)
    node.SetAttribute("MedAI.PredictedClass", ";".join(predicted))
    node.SetUseColumnTitleAsColumnHeader(True)
    return node


def scores_chart_node(scene, table, result: ClassificationResult, name: str | None = None):
    """A bar chart of the scores table: one series (single case) or one series per class (cohort)."""
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name or f"{result.model_name} chart")
    single = len(result.cases) == 1
    series_columns = [("score" if result.task == "regression" else "probability")] if single else list(result.class_names)
    for n, column in enumerate(series_columns):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{result.model_name} {column}")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
        series.SetYColumnName(column)
        series.SetLabelColumnName("class" if single else "volume")
        series.SetColor(*_series_color(n))
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(f"{result.model_name}: {'scores' if result.task == 'regression' else 'class probabilities'}")
    chart.SetXAxisTitle("class" if single else "volume")
    chart.SetYAxisTitle(f"score ({result.unit})" if result.unit else ("score" if result.task == "regression" else "probability"))
    return chart


def _series_color(n: int) -> tuple[float, float, float]:
    from ..results import Label

    return Label.default_color(n + 1)


def heatmap_node(scene, case: CaseResult, result: ClassificationResult, reference_node, name: str | None = None):
    """The case's heatmap as a scalar volume with exactly the reference node's dims, IJK-to-RAS and parent transform."""
    cls = result.class_names[case.heatmap_class] if case.heatmap_class is not None else ""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or f"{case.name} {result.method_title} {cls}".strip())
    node.SetIJKToRASMatrix(_numpy_to_matrix(node_ijk_to_ras(reference_node)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(case.heatmap, dtype=np.float32))
    node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
    node.SetAttribute("MedAI.ExplainedClass", cls)
    node.SetAttribute("MedAI.Method", result.method or "")
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    for color_id in HEATMAP_COLORMAPS:
        if scene.GetNodeByID(color_id) is not None:
            display.SetAndObserveColorNodeID(color_id)
            break
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(0.2)  # faint evidence stays transparent
    display.SetUpperThreshold(1.0)
    return node


def show_as_foreground(scene, heat_node, reference_node, opacity: float = 0.4) -> int:
    """Show the heatmap over the reference in every slice view present; returns how many views were set."""
    # GetNthNodeByClass, not GetNodesByClass: that returns a new vtkCollection the caller must UnRegister
    count = 0
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
        if reference_node is not None and not composite.GetBackgroundVolumeID():
            composite.SetBackgroundVolumeID(reference_node.GetID())
        composite.SetForegroundVolumeID(heat_node.GetID())
        composite.SetForegroundOpacity(opacity)
        count += 1
    return count


def findings_table_node(scene, findings: list[Finding], name: str):
    """One row per finding: case, kind, name, R, A, S (mm), size (mL), peak score."""
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    _column(node, "vtkStringArray", "volume", [f.case for f in findings])
    _column(node, "vtkStringArray", "kind", [f.kind for f in findings])
    _column(node, "vtkStringArray", "finding", [f.name for f in findings])
    for axis, label in enumerate("RAS"):
        _column(node, "vtkDoubleArray", label, [f.position_ras[axis] for f in findings])
        node.SetColumnUnitLabel(label, "mm")
    _column(node, "vtkDoubleArray", "size", [f.size_ml for f in findings])
    node.SetColumnUnitLabel("size", "mL")
    _column(node, "vtkDoubleArray", "peak score", [f.peak_score for f in findings])
    node.SetUseColumnTitleAsColumnHeader(True)
    return node


def findings_markups_node(scene, findings: list[Finding], name: str):
    """A fiducial markups node with one control point per finding, labelled with its name and peak score."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.CreateDefaultDisplayNodes()
    for f in findings:
        index = node.AddControlPoint(vtk.vtkVector3d(*f.position_ras), f"{f.name} ({f.peak_score:.2f})")
        node.SetNthControlPointDescription(index, f"{f.case}: {f.kind}, {f.size_ml:.3g} mL, peak {f.peak_score:.2f}")
        node.SetNthControlPointLocked(index, True)
    return node
