"""Segmentation engine and scene bridge with real MONAI networks and real MRML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import slicer
import vtk
import pytest
import torch

from conftest import oblique_affine, write_unet_card
from medai.engine.progress import CancelToken, Cancelled
from medai.engine.segment import segment
from medai.geometry import GeometryError, Volume
from medai.models.loader import load_model
from medai.slicer import scene as bridge
from medai.slicer.segment_logic import SegmentLogic


def threshold_card(folder: Path, in_channels: int = 1, use_channel: int = 0, spacing=None, mode="sliding_window") -> Path:
    """A real 1x1x1 Conv3d whose logits are (-x, +x) of one input channel: label 1 where that channel is above its mean."""
    folder.mkdir(parents=True, exist_ok=True)
    net = torch.nn.Conv3d(in_channels, 2, kernel_size=1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[0, use_channel] = -1.0
        net.weight[1, use_channel] = 1.0
    torch.save(net.state_dict(), folder / "model.pt")
    card = {
        "name": folder.name, "task": "segmentation",
        "network": {"_target_": "torch.nn.Conv3d", "in_channels": in_channels, "out_channels": 2, "kernel_size": 1},
        "weights": "model.pt", "inputs": [{"name": f"c{n}"} for n in range(in_channels)],
        "preprocessing": {"orientation": "RAS", "spacing": spacing,
                          "intensity": [{"op": "scale_range", "a_min": 0, "a_max": 100, "b_min": -1, "b_max": 1}]},
        "inference": {"mode": mode, "roi_size": [16, 16, 16], "overlap": 0.25, "activation": "softmax"},
        "labels": {"1": {"name": "bright", "color": "#ff8000"}},
    }
    path = folder / "medai.json"
    path.write_text(json.dumps(card))
    return path


def cube_volume(shape=(20, 24, 28), box=(slice(5, 12), slice(6, 15), slice(9, 20)), affine=None, name="cube") -> Volume:
    arr = np.zeros(shape, dtype=np.int16)
    arr[box] = 100
    return Volume(arr, oblique_affine() if affine is None else affine, name=name)


@pytest.mark.parametrize("affine", [oblique_affine(), np.diag([-0.9, -0.9, 2.0, 1.0]),
                                    oblique_affine(spacing=(1.0, 3.0, 0.6), angles=(2.5, 0.1, -1.2))])
def test_output_is_exactly_on_the_input_grid(tmp_path, affine):
    vol = cube_volume(affine=affine)
    model = load_model(threshold_card(tmp_path / "thr"), "cpu")
    result = segment(model, [vol])
    assert result.layers[0].shape == vol.array.shape
    # no resampling in this card: every voxel of the cube and nothing else, whatever the orientation
    assert np.array_equal(result.layers[0] == 1, vol.array > 50)
    assert result.labels[0].name == "bright" and np.allclose(result.labels[0].color, (1.0, 128 / 255, 0.0))


def test_resampled_model_maps_back_to_the_same_world_position(tmp_path):
    vol = cube_volume(shape=(30, 36, 40), box=(slice(8, 20), slice(10, 24), slice(12, 30)))
    model = load_model(threshold_card(tmp_path / "thr", spacing=[2.0, 2.0, 2.0]), "cpu")
    result = segment(model, [vol])
    truth = vol.array > 50
    got = result.layers[0] == 1
    dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
    assert dice > 0.85, dice


def test_multi_modal_inputs_are_resampled_onto_the_first_grid(tmp_path):
    ref = Volume(np.zeros((20, 24, 28), dtype=np.float32), np.diag([1.0, 1.0, 1.5, 1.0]), name="t1")
    # second modality on another grid: 2 mm voxels, shifted origin; its bright cube sits at world z 9..18
    arr2 = np.zeros((12, 14, 16), dtype=np.float32)
    arr2[3:7, 4:9, 5:11] = 100.0
    other = Volume(arr2, np.array([[2.0, 0, 0, -1.0], [0, 2.0, 0, 0.5], [0, 0, 2.0, 3.0], [0, 0, 0, 1]]), name="flair")
    model = load_model(threshold_card(tmp_path / "mm", in_channels=2, use_channel=1), "cpu")
    result = segment(model, [ref, other])
    mask = result.layers[0] == 1
    assert mask.shape == ref.array.shape
    k, j, i = np.nonzero(mask)
    centre_world = (ref.ijk_to_ras @ np.array([i.mean(), j.mean(), k.mean(), 1.0]))[:3]
    k2, j2, i2 = np.nonzero(arr2 > 50)
    expected = (other.ijk_to_ras @ np.array([i2.mean(), j2.mean(), k2.mean(), 1.0]))[:3]
    assert np.allclose(centre_world, expected, atol=1.0)


def test_unet_card_in_scene_gives_named_segments_on_reference_geometry(scene, tmp_path):
    card = write_unet_card(tmp_path / "unet", labels={"1": {"name": "liver", "color": [0.8, 0.2, 0.2]}, "2": "spleen"})
    node = bridge.volume_node_from_volume(scene, cube_volume(), name="CT")
    seg = SegmentLogic().segment([node], str(card), device="cpu")
    names = [seg.GetSegmentation().GetNthSegment(n).GetName() for n in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert names == ["liver", "spleen"]
    geometry = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    image = slicer.vtkOrientedImageData()
    assert slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image)  # the input volume's grid
    got, want = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(got)
    node.GetIJKToRASMatrix(want)
    assert np.allclose([[got.GetElement(r, c) for c in range(4)] for r in range(4)],
                       [[want.GetElement(r, c) for c in range(4)] for r in range(4)], atol=1e-6)
    assert image.GetExtent() == node.GetImageData().GetExtent()
    arr = bridge.segment_array(seg, seg.GetSegmentation().GetSegmentIdBySegmentName("liver"), node)
    assert arr.shape == cube_volume().array.shape


def _scene_state(scene) -> list[tuple[str, str]]:
    return [(n.GetID(), n.GetName()) for n in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))]


def test_failures_leave_the_scene_unchanged(scene, tmp_path):
    card = threshold_card(tmp_path / "thr")
    node = bridge.volume_node_from_volume(scene, cube_volume(), name="CT")
    nan_arr = cube_volume().array.astype(np.float32)
    nan_arr[3, 3, 3] = np.nan
    nan_node = bridge.volume_node_from_volume(scene, Volume(nan_arr, oblique_affine()), name="withNaN")
    slab = bridge.volume_node_from_volume(scene, Volume(np.ones((1, 30, 30), np.int16), np.eye(4)), name="slice")
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    output.GetSegmentation().AddEmptySegment("keep", "keep")
    before = _scene_state(scene)
    logic = SegmentLogic()
    with pytest.raises(GeometryError, match="expects 1 input channel"):
        logic.segment([node, node], str(card), output_segmentation=output, device="cpu")
    with pytest.raises(GeometryError, match="NaN"):
        logic.segment([nan_node], str(card), output_segmentation=output, device="cpu")
    with pytest.raises(GeometryError, match="single slice"):
        logic.segment([slab], str(card), output_segmentation=output, device="cpu")
    assert _scene_state(scene) == before
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    before = _scene_state(scene)
    with pytest.raises(GeometryError, match="no voxels"):
        logic.segment([empty], str(card), device="cpu")
    assert _scene_state(scene) == before
    assert output.GetSegmentation().GetSegmentIDs() == ("keep",) or list(output.GetSegmentation().GetSegmentIDs()) == ["keep"]


def test_cancel_mid_run_raises_and_adds_nothing(scene, tmp_path):
    card = write_unet_card(tmp_path / "unet")
    node = bridge.volume_node_from_volume(scene, cube_volume(shape=(40, 48, 56)), name="CT")
    before = _scene_state(scene)
    token = CancelToken()
    seen = []

    def on_progress(fraction: float, stage: str) -> None:
        seen.append((fraction, stage))
        if stage == "inference" and fraction > 0.3:
            token.cancel()

    with pytest.raises(Cancelled):
        SegmentLogic().segment([node], str(card), device="cpu", progress=on_progress, cancel=token)
    assert _scene_state(scene) == before
    assert any(stage == "inference" for _, stage in seen)
    assert max(f for f, _ in seen) < 0.9  # stopped between windows, well before the end


def test_existing_output_node_is_reused(scene, tmp_path):
    card = threshold_card(tmp_path / "thr")
    node = bridge.volume_node_from_volume(scene, cube_volume(), name="CT")
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    output.GetSegmentation().AddEmptySegment("old", "old")
    seg = SegmentLogic().segment([node], str(card), output_segmentation=output, device="cpu")
    assert seg is output
    assert [output.GetSegmentation().GetNthSegment(n).GetName() for n in range(output.GetSegmentation().GetNumberOfSegments())] == ["bright"]
    arr = bridge.segment_array(output, output.GetSegmentation().GetNthSegmentID(0), node)
    assert np.array_equal(arr > 0, cube_volume().array > 50)


def test_progress_reports_stages_and_reaches_one(tmp_path):
    model = load_model(write_unet_card(tmp_path / "u"), "cpu")
    seen = []
    result = segment(model, [cube_volume()], lambda f, s: seen.append((f, s)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"preprocess", "inference", "postprocess"} <= {s for _, s in seen}
    assert set(result.timings) == {"preprocess", "inference", "postprocess"}


def test_postprocessing_keeps_largest_component_and_fills_holes(tmp_path):
    arr = np.zeros((20, 20, 20), dtype=np.int16)
    arr[2:12, 2:12, 2:12] = 100
    arr[5:8, 5:8, 5:8] = 0  # a cavity
    arr[15:18, 15:18, 15:18] = 100  # a small separate blob
    vol = Volume(arr, np.eye(4))
    path = threshold_card(tmp_path / "pp")
    card = json.loads(path.read_text())
    card["postprocessing"] = {"largest_component": True, "fill_holes": True}
    path.write_text(json.dumps(card))
    mask = segment(load_model(path, "cpu"), [vol]).layers[0] == 1
    expected = np.zeros_like(mask)
    expected[2:12, 2:12, 2:12] = True
    assert np.array_equal(mask, expected)


def test_labelmap_output_and_terminology(scene, tmp_path):
    import slicer

    path = threshold_card(tmp_path / "thr")
    card = json.loads(path.read_text())
    term = "SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^|"
    card["labels"]["1"]["terminology"] = term
    path.write_text(json.dumps(card))
    vol = cube_volume()
    node = bridge.volume_node_from_volume(scene, vol, name="CT")
    logic = SegmentLogic()
    seg = logic.segment([node], str(path), device="cpu", output_labelmap=True)
    segment = seg.GetSegmentation().GetNthSegment(0)
    assert segment.GetTerminology() == term
    labelmap = logic.last_labelmap_node
    assert labelmap.IsA("vtkMRMLLabelMapVolumeNode")
    assert np.array_equal(slicer.util.arrayFromVolume(labelmap), (vol.array > 50).astype(np.uint8))
    assert np.allclose(bridge.node_ijk_to_ras(labelmap), bridge.node_ijk_to_ras(node))
    colors = labelmap.GetDisplayNode().GetColorNode()
    assert colors.GetColorName(1) == "bright"


def test_broken_model_leaves_scene_and_output_node_unchanged(scene, tmp_path):
    from medai.models.loader import ModelLoadError

    path = threshold_card(tmp_path / "broken")
    (tmp_path / "broken" / "model.pt").write_bytes(b"\x00garbage" * 100)
    node = bridge.volume_node_from_volume(scene, cube_volume(), name="CT")
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    output.GetSegmentation().AddEmptySegment("keep", "keep")
    before = _scene_state(scene)
    with pytest.raises(ModelLoadError, match="not a loadable weights file"):
        SegmentLogic().segment([node], str(path), output_segmentation=output, device="cpu")
    assert _scene_state(scene) == before
    assert list(output.GetSegmentation().GetSegmentIDs()) == ["keep"]


def test_internal_labelmap_geometry_is_the_input_geometry(scene, tmp_path):
    """Not resampled on the way in: the segment's own oriented image has the volume's IJK-to-RAS and extent."""
    import vtk

    vol = cube_volume(affine=oblique_affine(spacing=(0.7, 1.3, 2.9)))
    node = bridge.volume_node_from_volume(scene, vol, name="CT")
    seg = SegmentLogic().segment([node], str(threshold_card(tmp_path / "thr")), device="cpu")
    image = seg.GetSegmentation().GetNthSegment(0).GetRepresentation("Binary labelmap")
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    got = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(got, vol.ijk_to_ras, atol=1e-9)
    k, j, i = vol.array.shape
    assert tuple(image.GetExtent()) == (0, i - 1, 0, j - 1, 0, k - 1)


def test_reused_labelmap_keeps_one_colour_table(scene, tmp_path):
    node = bridge.volume_node_from_volume(scene, cube_volume(), name="CT")
    logic = SegmentLogic()
    logic.segment([node], str(threshold_card(tmp_path / "thr")), device="cpu", output_labelmap=True)
    labelmap = logic.last_labelmap_node
    tables = scene.GetNodesByClass("vtkMRMLColorTableNode").GetNumberOfItems()
    logic.segment([node], str(threshold_card(tmp_path / "thr")), device="cpu", output_labelmap=labelmap)
    assert logic.last_labelmap_node is labelmap
    assert scene.GetNodesByClass("vtkMRMLColorTableNode").GetNumberOfItems() == tables
    assert labelmap.GetDisplayNode().GetColorNode().GetColorName(1) == "bright"
