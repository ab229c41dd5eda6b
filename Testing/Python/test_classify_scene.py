"""ClassifyLogic in a real headless MRML scene: every output node, its geometry, and bad inputs that change nothing."""

from __future__ import annotations

import numpy as np
import pytest
import slicer

from classify_helpers import KERAS_PNEUMONIA_CNN, SMALL_DENSENET_3D, masked_model, two_squares, write_card
from conftest import oblique_affine
from medai.geometry import GeometryError, Volume
from medai.slicer.classify_logic import ClassifyLogic
from medai.slicer.scene import node_ijk_to_ras, volume_node_from_volume


def _card_3d(tmp_path):
    return write_card(tmp_path / "dense3d", SMALL_DENSENET_3D, {
        "task": "classification", "inputs": [{"name": "CT"}], "classes": ["normal", "benign", "malignant"],
        "preprocessing": {"orientation": "RAS", "intensity": [{"op": "zscore"}]},
        "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}})


def _volume_node(scene, shape=(18, 22, 26), seed=0, name="ct", affine=None):
    rng = np.random.default_rng(seed)
    arr = rng.normal(size=shape).astype(np.float32)
    arr[6:12, 8:14, 10:16] += 4.0
    return volume_node_from_volume(scene, Volume(arr, oblique_affine() if affine is None else affine, name))


def _snapshot(scene) -> list[str]:
    return sorted(scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes()))


def _column(table, name):
    return [table.GetCellText(r, table.GetColumnIndex(name)) for r in range(table.GetNumberOfRows())]


def test_single_volume_outputs_and_geometry(scene, tmp_path):
    node = _volume_node(scene)
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    steps = []
    out = ClassifyLogic().classify([node], str(_card_3d(tmp_path)), device="cpu", progress=lambda f, s: steps.append(f))
    res = out.result
    # scores table: one row per class, sorted, predicted marked
    t = out.table_node
    assert t.IsA("vtkMRMLTableNode") and t.GetNumberOfRows() == 3
    probs = [float(p) for p in _column(t, "probability")]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    assert _column(t, "predicted") == ["yes", "", ""]
    assert t.GetAttribute("MedAI.PredictedClass") == _column(t, "class")[0] == res.class_names[res.cases[0].predicted[0]]
    # chart: bar series of that table
    chart = out.chart_node
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNodeID() == t.GetID() and series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
    # heatmap: exactly the input's dims and IJK-to-RAS, coloured overlay in the slice views
    heat = out.heatmap_node
    assert heat.IsA("vtkMRMLScalarVolumeNode")
    assert heat.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()
    np.testing.assert_allclose(node_ijk_to_ras(heat), node_ijk_to_ras(node), atol=1e-9)
    arr = slicer.util.arrayFromVolume(heat)
    assert arr.dtype == np.float32 and 0.0 <= arr.min() and arr.max() == pytest.approx(1.0)
    display = heat.GetDisplayNode()
    assert display.GetColorNodeID() and display.GetColorNodeID() != "vtkMRMLColorTableNodeGrey"
    assert composite.GetForegroundVolumeID() == heat.GetID() and composite.GetBackgroundVolumeID() == node.GetID()
    assert 0 < composite.GetForegroundOpacity() < 1
    # findings: hot spots in a table and as markups control points at the same RAS positions
    f = out.findings_table_node
    m = out.markups_node
    assert m.IsA("vtkMRMLMarkupsFiducialNode") and f.GetNumberOfRows() == m.GetNumberOfControlPoints() >= 1
    for r in range(f.GetNumberOfRows()):
        pos = m.GetNthControlPointPosition(r)
        assert [float(f.GetCellText(r, f.GetColumnIndex(a))) for a in "RAS"] == pytest.approx(list(pos), abs=1e-3)
        assert float(f.GetCellText(r, f.GetColumnIndex("size"))) > 0
    # the hottest spot lies where the heatmap peaks
    peak_kji = np.unravel_index(np.argmax(arr), arr.shape)
    peak_ras = node_ijk_to_ras(node) @ np.array([peak_kji[2], peak_kji[1], peak_kji[0], 1.0])
    assert np.linalg.norm(peak_ras[:3] - np.array(m.GetNthControlPointPosition(0))) < 15.0
    assert steps[-1] == 1.0 and steps == sorted(steps)


def test_cohort_table_and_no_explain(scene, tmp_path):
    nodes = [_volume_node(scene, seed=s, name=f"case{s}") for s in range(3)]
    out = ClassifyLogic().classify(nodes, str(_card_3d(tmp_path)), explain=False, device="cpu")
    t = out.table_node
    assert t.GetNumberOfRows() == 3 and _column(t, "volume") == ["case0", "case1", "case2"]
    assert t.GetNumberOfColumns() == 2 + 3
    for r in range(3):
        scores = [float(t.GetCellText(r, t.GetColumnIndex(c))) for c in ("normal", "benign", "malignant")]
        assert t.GetCellText(r, 1) == ["normal", "benign", "malignant"][int(np.argmax(scores))]
    assert out.chart_node.GetNumberOfPlotSeriesNodes() == 3
    assert out.heatmap_node is None and out.markups_node is None and out.findings_table_node is None


def _segmentation(scene, reference, boxes):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    mask = np.zeros(slicer.util.arrayFromVolume(reference).shape, dtype=np.uint8)
    for box in boxes:
        mask[box] = 1
    sid = seg.GetSegmentation().AddEmptySegment("lesion")
    if boxes:
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, sid, reference)
    return seg, sid


def test_region_segment_crops_and_lists_components(scene, tmp_path):
    arr = two_squares()
    node = volume_node_from_volume(scene, Volume(arr, np.diag([0.7, 0.7, 1.0, 1.0]), "xray"))
    n = arr.shape[1]
    import torch

    mask = torch.zeros(n, n)
    mask[:, :] = 1  # the net uses everything it sees: the crop decides what it sees
    model = masked_model(tmp_path, mask)
    seg, sid = _segmentation(scene, node, [np.s_[0, 6:17, 6:17], np.s_[0, 3:5, 3:5]])
    out = ClassifyLogic().classify(node, model, region=(seg, "lesion"))
    heat = slicer.util.arrayFromVolume(out.heatmap_node)
    assert heat.shape == arr.shape and heat[0, 9:14, 9:14].min() > 0.5
    assert heat[0, 26:32, 26:32].max() == 0.0  # outside the cropped box
    regions = [f for f in out.result.findings if f.kind == "region"]
    assert len(regions) == 2 and regions[0].voxels == 121 and regions[1].voxels == 4
    assert regions[0].peak_score > 0.5
    assert regions[0].size_ml == pytest.approx(121 * 0.49 / 1000)


def test_roi_region(scene, tmp_path):
    node = volume_node_from_volume(scene, Volume(two_squares(), np.eye(4), "xray"))
    import torch

    model = masked_model(tmp_path, torch.ones(40, 40))
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(11.0, 11.0, 0.0)
    roi.SetSize(12.0, 12.0, 4.0)
    out = ClassifyLogic().classify(node, model, region=roi)
    heat = slicer.util.arrayFromVolume(out.heatmap_node)
    assert heat[0, 9:14, 9:14].min() > 0.5 and heat[0, 25:33, 25:33].max() == 0.0
    assert not [f for f in out.result.findings if f.kind == "region"]  # an ROI is a box, not components


def test_bad_inputs_leave_the_scene_unchanged(scene, tmp_path):
    logic = ClassifyLogic()
    card_3d = str(_card_3d(tmp_path))
    node = _volume_node(scene)
    rgb = volume_node_from_volume(scene, Volume(np.zeros((18, 22, 26, 2), np.float32), oblique_affine(), "two-channel"))
    keras = write_card(tmp_path / "pneumonia", KERAS_PNEUMONIA_CNN, {
        "task": "classification", "inputs": [{"name": "CXR"}], "classes": ["normal", "pneumonia"],
        "preprocessing": {"intensity": [{"op": "scale_range", "a_min": 0, "a_max": 255}]},
        "inference": {"mode": "whole", "roi_size": [64, 64], "activation": "sigmoid"}})
    cxr = volume_node_from_volume(scene, Volume(np.random.default_rng(0).random((1, 80, 70), np.float32), np.eye(4), "cxr"))
    blank = volume_node_from_volume(scene, Volume(np.zeros((1, 64, 64), np.float32), np.eye(4), "blank"))
    far = Volume(np.zeros((18, 22, 26), np.float32), np.eye(4) @ np.diag([1, 1, 1, 1.0]), "far")
    far.ijk_to_ras[:3, 3] = [500.0, 500.0, 500.0]
    far_node = volume_node_from_volume(scene, far)
    seg_out, _ = _segmentation(scene, far_node, [np.s_[2:5, 2:5, 2:5]])
    seg_empty, empty_id = _segmentation(scene, node, [])
    roi_out = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far box")
    roi_out.SetCenter(900.0, 0.0, 0.0)
    roi_out.SetSize(5.0, 5.0, 5.0)
    before = _snapshot(scene)
    cases = [
        (dict(inputVolumes=[cxr], model=str(keras)), "needs an input of exactly 64x64"),
        (dict(inputVolumes=[blank], model=str(keras)), "constant image"),
        (dict(inputVolumes=[rgb], model=card_3d), "expects 1 input channel"),
        (dict(inputVolumes=[node], model=card_3d, region=seg_out), "lies outside volume"),
        (dict(inputVolumes=[node], model=card_3d, region=(seg_empty, empty_id)), "is empty"),
        (dict(inputVolumes=[node], model=card_3d, region=roi_out), "lies outside volume"),
        (dict(inputVolumes=[node], model=card_3d, target_class=7), "out of range"),
    ]
    for kwargs, message in cases:
        with pytest.raises((GeometryError, ValueError), match=message):
            logic.classify(device="cpu", **kwargs)
        assert _snapshot(scene) == before, f"scene changed after a failed run ({message})"


def _ball_segmentation(scene, volume_node, center_ijk, radius):
    """A segmentation with one painted ball, on the volume's geometry (binary labelmap source)."""
    from medai.geometry import Volume as _V
    from medai.results import Label, SegmentationResult
    from medai.slicer import scene as bridge

    ref = bridge.volume_from_node(volume_node)
    k, j, i = np.indices(ref.array.shape)
    ball = ((i - center_ijk[0]) ** 2 + (j - center_ijk[1]) ** 2 + (k - center_ijk[2]) ** 2 <= radius ** 2).astype(np.uint8)
    result = SegmentationResult(_V(ref.array, bridge.node_ijk_to_ras(volume_node)), [ball], [Label(1, "ball", (1.0, 0.0, 0.0))])
    return bridge.segmentation_node_from_result(result, volume_node), ball


def test_segment_region_follows_a_shared_parent_transform(scene):
    import vtk

    from medai.slicer import scene as bridge
    from medai.slicer.classify_logic import region_volume

    vol = bridge.volume_node_from_volume(scene, Volume(np.zeros((20, 20, 20), np.float32), np.eye(4)), name="v")
    seg, ball = _ball_segmentation(scene, vol, (10, 10, 10), 3)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(2, 3, 3.0)
    transform.SetMatrixTransformToParent(m)
    vol.SetAndObserveTransformNodeID(transform.GetID())
    seg.SetAndObserveTransformNodeID(transform.GetID())
    mask = region_volume((seg, "ball"), vol).array
    assert np.array_equal(mask > 0, ball > 0)  # both moved together: same voxels


def test_segment_region_from_closed_surface_source(scene):
    from medai.slicer import scene as bridge
    from medai.slicer.classify_logic import region_volume

    vol = bridge.volume_node_from_volume(scene, Volume(np.zeros((24, 24, 24), np.float32), np.eye(4)), name="v")
    seg, ball = _ball_segmentation(scene, vol, (12, 12, 12), 6)
    seg.CreateClosedSurfaceRepresentation()
    seg.GetSegmentation().SetSourceRepresentationName("Closed surface")
    seg.GetSegmentation().RemoveRepresentation("Binary labelmap")
    assert not seg.GetSegmentation().ContainsRepresentation("Binary labelmap")
    mask = region_volume((seg, "ball"), vol).array > 0
    dice = 2 * (mask & (ball > 0)).sum() / (mask.sum() + ball.sum())
    assert dice > 0.8, dice
    assert not seg.GetSegmentation().ContainsRepresentation("Binary labelmap")  # the user's node is left as it was


def test_apply_that_fails_half_way_adds_nothing(scene, tmp_path):
    """A direct ClassifyLogic.apply (no job around it) is all or nothing too."""
    node = _volume_node(scene)
    logic = ClassifyLogic()
    result = logic.compute([node], str(_card_3d(tmp_path)), device="cpu")
    before = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    result.cases[0].heatmap = "not an array"  # the heatmap node fails after the table and chart exist
    with pytest.raises(Exception):
        logic.apply(result)
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == before
