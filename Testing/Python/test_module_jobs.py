"""MedAISegment below the widget, headless with real MRML: worker-thread jobs, cancel, failure, reuse."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest

from conftest import write_unet_card
from medai.engine.progress import Cancelled
from medai.geometry import GeometryError, Volume
from medai.slicer import scene as bridge
from medai.slicer.jobs import CANCELLED, FAILED, SUCCEEDED, MainThreadQueue, SegmentJob, SegmentRunner


def _volume_node(scene, shape=(24, 28, 20), name="T1", value=None, spacing=2.0):
    rng = np.random.default_rng(0)
    array = rng.normal(100, 20, size=shape).astype(np.float32) if value is None else np.full(shape, value, np.float32)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 2.0)
    return bridge.volume_node_from_volume(scene, Volume(array, affine, name=name))


def _scene_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    return write_unet_card(tmp_path_factory.mktemp("models") / "tiny-unet")


def test_wait_for_completion_returns_node_on_input_grid(scene, card):
    vol = _volume_node(scene)
    before = set(_scene_ids(scene))
    stages: list[str] = []
    threads: set[int] = set()

    def progress(fraction, stage):
        stages.append(stage)
        threads.add(threading.get_ident())

    runner = SegmentRunner()
    seg = runner.segment([vol], str(card), progress=progress)
    assert seg.IsA("vtkMRMLSegmentationNode") and seg.GetScene() is scene
    assert set(_scene_ids(scene)) > before
    segment_id = seg.GetSegmentation().GetNthSegmentID(0)
    assert seg.GetSegmentation().GetSegment(segment_id).GetName() == "organ"
    arr = bridge.segment_array(seg, segment_id, vol)
    assert arr.shape == slicer_array_shape(vol)
    assert runner.job.state == SUCCEEDED and runner.job.device_used == "cpu"
    assert {"load", "preprocess", "inference", "postprocess", "scene"} <= set(runner.job.timings)
    assert "inference" in stages and threads == {threading.get_ident()}  # callbacks ran on this (main) thread


def slicer_array_shape(node):
    import slicer

    return slicer.util.arrayFromVolume(node).shape


def test_no_wait_returns_at_once_and_reports_through_callbacks(scene, card):
    vol = _volume_node(scene)
    queue = MainThreadQueue()
    runner = SegmentRunner(queue)
    done: list = []
    fractions: list[float] = []
    job = runner.segment(vol, str(card), wait_for_completion=False,
                         progress=lambda f, s: fractions.append(f), completed=done.append)
    assert not done  # nothing runs on this thread until the queue is drained
    n_seg_before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    deadline = time.time() + 60
    while not job.done and time.time() < deadline:
        queue.process_pending(timeout=0.05)
    assert done == [job] and job.state == SUCCEEDED
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == n_seg_before + 1
    assert fractions and fractions == sorted(fractions)
    assert job.elapsed > 0


def test_cancel_mid_run_leaves_scene_unchanged(scene, tmp_path):
    # 1 mm working spacing on a 96^3 volume: 64 sliding windows, cancelled at the first inference report
    card = write_unet_card(tmp_path / "slow-unet", preprocessing={"orientation": "RAS", "spacing": [1.0, 1.0, 1.0],
                                                                 "intensity": [{"op": "zscore"}]})
    vol = _volume_node(scene, shape=(96, 96, 96), spacing=1.0)
    out = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    before = _scene_ids(scene)
    runner = SegmentRunner()
    at_cancel: list[float] = []

    def cancel_in_inference(fraction, stage):  # worker thread: deterministic mid-run cancel
        if stage.startswith("inference") and fraction > 0.35 and not at_cancel:
            at_cancel.append(fraction)
            job.cancel()

    job = SegmentJob(runner.logic, [vol], str(card), out, schedule=runner.schedule,
                     on_worker_progress=cancel_in_inference)
    job.start()
    with pytest.raises(Cancelled):
        job.wait(timeout=60)
    assert job.state == CANCELLED
    assert at_cancel and job.progress == at_cancel[0] < 0.9  # stopped at the next window, inside inference
    assert _scene_ids(scene) == before and out.GetSegmentation().GetNumberOfSegments() == 0


@pytest.mark.parametrize("problem", ["channels", "nan"])
def test_failure_leaves_scene_and_output_untouched(scene, card, problem):
    vol = _volume_node(scene)
    other = _volume_node(scene, name="T2")
    if problem == "nan":
        import slicer

        arr = slicer.util.arrayFromVolume(vol)
        arr[3, 4, 5] = np.nan
        slicer.util.arrayFromVolumeModified(vol)
    inputs = [vol, other] if problem == "channels" else [vol]
    out = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    out.GetSegmentation().AddEmptySegment("keep", "keep")
    before = _scene_ids(scene)
    runner = SegmentRunner()
    with pytest.raises(GeometryError, match="input channel" if problem == "channels" else "NaN"):
        runner.segment(inputs, str(card), out)
    assert runner.job.state == FAILED
    assert _scene_ids(scene) == before
    assert out.GetSegmentation().GetNumberOfSegments() == 1 and out.GetSegmentation().GetSegment("keep") is not None
    # and without an output node: no half-made node either
    with pytest.raises(GeometryError):
        runner.segment(inputs, str(card))
    assert _scene_ids(scene) == before


def test_existing_output_is_reused_with_same_id(scene, card):
    vol = _volume_node(scene)
    out = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    out.GetSegmentation().AddEmptySegment("old", "old")
    out_id = out.GetID()
    runner = SegmentRunner()
    seg = runner.segment([vol], str(card), out)
    seg2 = runner.segment([vol], str(card), out)
    assert seg is out and seg2 is out and out.GetID() == out_id
    names = [out.GetSegmentation().GetNthSegment(i).GetName() for i in range(out.GetSegmentation().GetNumberOfSegments())]
    assert names == ["organ"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_apply_failing_half_way_rolls_back(scene, card):
    """A result that breaks while being written: the output node gets its old segments back."""
    vol = _volume_node(scene)
    runner = SegmentRunner()
    result = runner.logic.compute([vol], str(card))
    out = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    out.GetSegmentation().AddEmptySegment("keep", "keep")
    before = _scene_ids(scene)
    broken = copy.copy(result.labels[0])
    broken.layer = 5  # no such layer: fails after the old segments were removed
    result.labels = [broken]  # (a copy: the labels belong to the cached model)
    with pytest.raises(IndexError):
        runner.logic.apply(result, vol, out)
    assert [out.GetSegmentation().GetNthSegmentID(i) for i in range(out.GetSegmentation().GetNumberOfSegments())] == ["keep"]
    with pytest.raises(IndexError):
        runner.logic.apply(result, vol, None)
    assert _scene_ids(scene) == before


def test_wrong_output_type_and_removed_input_are_named(scene, card):
    vol = _volume_node(scene)
    runner = SegmentRunner()
    with pytest.raises(TypeError, match="must be a segmentation node"):
        runner.segment([vol], str(card), _volume_node(scene, name="notaseg"))
    job = runner.segment([vol], str(card), wait_for_completion=False)
    job.wait_computed(timeout=60)  # let compute finish before removing the input
    scene.RemoveNode(vol)
    n_before = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="removed from the scene"):
        job.wait(timeout=60)
    assert scene.GetNumberOfNodes() == n_before


def test_second_run_while_running_is_refused(scene, card):
    vol = _volume_node(scene)
    runner = SegmentRunner()
    job = runner.segment([vol], str(card), wait_for_completion=False)
    with pytest.raises(RuntimeError, match="already running"):
        runner.segment([vol], str(card), wait_for_completion=False)
    assert job.wait(timeout=60).IsA("vtkMRMLSegmentationNode")
