"""MedAIClassify below the widget, headless with real MRML and torch: ClassifyRunner jobs, cancel, failure, apply."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import slicer

from classify_helpers import SMALL_DENSENET_3D, write_card
from conftest import oblique_affine
from medai.engine.progress import Cancelled
from medai.requests import ClassifyRequest
from medai.geometry import GeometryError, Volume
from medai.slicer.classify_logic import ClassifyLogic, ClassifyOutput
from medai.slicer.jobs import CANCELLED, FAILED, SUCCEEDED, ClassifyJob, ClassifyRunner, MainThreadQueue
from medai.slicer.scene import node_ijk_to_ras, volume_node_from_volume

OUTPUTS = ("table_node", "chart_node", "heatmap_node", "findings_table_node", "markups_node")


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("models") / "dense3d"
    return str(write_card(folder, SMALL_DENSENET_3D, {
        "task": "classification", "inputs": [{"name": "CT"}], "classes": ["normal", "benign", "malignant"],
        "preprocessing": {"orientation": "RAS", "intensity": [{"op": "zscore"}]},
        "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}}))


def _volume_node(scene, shape=(18, 22, 26), seed=0, name="ct", components: int | None = None):
    rng = np.random.default_rng(seed)
    full = shape if components is None else (*shape, components)
    arr = rng.normal(size=full).astype(np.float32)
    arr[6:12, 8:14, 10:16] += 4.0
    return volume_node_from_volume(scene, Volume(arr, oblique_affine(), name))


def _ids(scene) -> list[str]:
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def _record_node_threads(scene) -> list[int]:
    """The thread that added each node from now on (MRML invokes NodeAddedEvent on the adding thread)."""
    threads: list[int] = []
    scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, lambda caller, event: threads.append(threading.get_ident()))
    return threads


def _assert_outputs(scene, out: ClassifyOutput, volume) -> None:
    for name in OUTPUTS:
        node = getattr(out, name)
        assert node is not None and node.GetScene() is scene, f"{name} missing from the scene"
    assert out.table_node.IsA("vtkMRMLTableNode") and out.table_node.GetNumberOfRows() == 3
    assert out.chart_node.IsA("vtkMRMLPlotChartNode")
    assert out.markups_node.IsA("vtkMRMLMarkupsFiducialNode")
    heat = out.heatmap_node
    assert heat.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_allclose(node_ijk_to_ras(heat), node_ijk_to_ras(volume), atol=1e-9)


def test_wait_for_completion_returns_all_output_nodes(scene, card):
    vol = _volume_node(scene)
    before = set(_ids(scene))
    added_by = _record_node_threads(scene)
    stages: list[str] = []
    threads: set[int] = set()

    def progress(fraction, stage):
        stages.append(stage)
        threads.add(threading.get_ident())

    runner = ClassifyRunner()
    out = runner.classify([vol], card, device="cpu", progress=progress)
    assert isinstance(out, ClassifyOutput)
    _assert_outputs(scene, out, vol)
    assert set(_ids(scene)) > before
    assert added_by and set(added_by) == {threading.get_ident()}  # every node created on this (main) thread
    assert threads == {threading.get_ident()} and any("inference" in s for s in stages) and stages[-1] == "done"
    job = runner.job
    assert job.state == SUCCEEDED and job.output is out and job.device_used == "cpu"
    assert {"load", "scene"} <= set(job.timings) and any(k.endswith("inference") for k in job.timings)
    assert out.result.method == "gradcam"


def test_no_wait_returns_at_once_and_nodes_appear_only_on_apply(scene, card):
    vol = _volume_node(scene)
    queue = MainThreadQueue()
    runner = ClassifyRunner(queue)
    done: list = []
    fractions: list[float] = []
    before = _ids(scene)
    job = runner.classify(vol, card, device="cpu", wait_for_completion=False, method="gradcam++", target_class="benign",
                          progress=lambda f, s: fractions.append(f), completed=done.append)
    assert isinstance(job, ClassifyJob) and not done  # nothing runs on this thread until the queue is drained
    job.wait_computed(timeout=60)  # compute finished on the worker, queue not drained
    deadline = time.time() + 60
    assert job.stage == "done" and not job.done
    assert _ids(scene) == before, "the worker thread must not touch the scene"
    while not job.done and time.time() < deadline:
        queue.process_pending(timeout=0.05)
    assert done == [job] and job.state == SUCCEEDED
    _assert_outputs(scene, job.output, vol)
    assert job.output.result.method == "gradcam++"
    assert job.output.result.cases[0].heatmap_class == 1  # the target class, not necessarily the predicted one
    assert fractions and fractions == sorted(fractions) and job.elapsed > 0


def test_no_explain_and_cohort(scene, card):
    nodes = [_volume_node(scene, seed=s, name=f"case{s}") for s in range(3)]
    out = ClassifyRunner().classify(nodes, card, explain=False, device="cpu")
    assert out.table_node.GetNumberOfRows() == 3
    assert out.heatmap_node is None and out.markups_node is None and out.findings_table_node is None


def test_cancel_mid_run_leaves_scene_unchanged(scene, card):
    nodes = [_volume_node(scene, seed=s, name=f"case{s}") for s in range(3)]  # a cohort: three cases, stages each
    before = _ids(scene)
    runner = ClassifyRunner()
    at_cancel: list[str] = []

    def cancel_in_first_inference(fraction, stage):  # worker thread: deterministic mid-run cancel
        if stage.endswith("inference") and not at_cancel:
            at_cancel.append(stage)
            job.cancel()

    job = ClassifyJob(runner.logic, nodes, card, request=ClassifyRequest(device="cpu"), schedule=runner.schedule,
                      on_worker_progress=cancel_in_first_inference)
    runner.run(job, wait_for_completion=False)
    with pytest.raises(Cancelled):
        job.wait(timeout=60)
    assert job.state == CANCELLED and at_cancel == ["case0: inference"] and job.progress < 0.5
    assert _ids(scene) == before and job.output is None


def test_cancel_after_compute_still_leaves_scene_unchanged(scene, card):
    vol = _volume_node(scene)
    before = _ids(scene)
    runner = ClassifyRunner()
    job = runner.classify(vol, card, device="cpu", wait_for_completion=False)
    job.wait_computed(timeout=60)
    job.cancel()  # the result is computed but not applied yet
    with pytest.raises(Cancelled):
        job.wait(timeout=60)
    assert job.state == CANCELLED and _ids(scene) == before


def _empty_segment(scene, reference):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    return seg, seg.GetSegmentation().AddEmptySegment("lesion")


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "no-wait"])
@pytest.mark.parametrize("problem", ["channels", "empty-region", "target"])
def test_failure_leaves_scene_unchanged(scene, card, problem, wait):
    vol = _volume_node(scene)
    kwargs: dict = {}
    if problem == "channels":
        inputs, message = [_volume_node(scene, components=2, name="two-channel")], "expects 1 input channel"
    elif problem == "empty-region":
        inputs, message = [vol], "is empty"
        kwargs["region"] = _empty_segment(scene, vol)
    else:
        inputs, message = [vol], "out of range"
        kwargs["target_class"] = 7
    before = _ids(scene)
    queue = MainThreadQueue()
    runner = ClassifyRunner(queue)
    if wait:
        with pytest.raises((GeometryError, ValueError), match=message):
            runner.classify(inputs, card, device="cpu", **kwargs)
        job = runner.job
    else:
        done: list = []
        job = runner.classify(inputs, card, device="cpu", wait_for_completion=False, completed=done.append, **kwargs)
        assert not done  # a failure, too, is reported on the main thread when the queue is drained
        deadline = time.time() + 60
        while not job.done and time.time() < deadline:
            queue.process_pending(timeout=0.05)
        assert done == [job] and message in str(job.error)
    assert job.state == FAILED and job.output is None
    assert _ids(scene) == before, f"scene changed after a failed run ({problem})"


def test_region_and_its_removal_while_running(scene, card):
    vol = _volume_node(scene)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    center = node_ijk_to_ras(vol) @ np.array([13.0, 11.0, 9.0, 1.0])
    roi.SetCenter(*center[:3])
    roi.SetSize(20.0, 20.0, 20.0)
    out = ClassifyRunner().classify(vol, card, region=roi, device="cpu")
    assert out.heatmap_node.GetImageData().GetDimensions() == vol.GetImageData().GetDimensions()
    runner = ClassifyRunner()
    job = runner.classify(vol, card, region=roi, device="cpu", wait_for_completion=False)
    job.wait_computed(timeout=60)
    scene.RemoveNode(roi)
    before = _ids(scene)
    with pytest.raises(RuntimeError, match="box: the input was removed from the scene"):
        job.wait(timeout=60)
    assert _ids(scene) == before


class _BrokenApply(ClassifyLogic):
    """A real ClassifyLogic whose apply fails after it has created its nodes (a bug half-way through apply)."""

    def apply(self, result, show: bool = True):
        super().apply(result, show)
        raise RuntimeError("broken after the nodes were made")


def test_apply_failing_half_way_removes_what_it_added(scene, card):
    vol = _volume_node(scene)
    before = _ids(scene)
    runner = ClassifyRunner(logic=_BrokenApply())
    with pytest.raises(RuntimeError, match="broken after"):
        runner.classify(vol, card, device="cpu")
    assert runner.job.state == FAILED and _ids(scene) == before


def test_second_run_while_running_is_refused(scene, card):
    vol = _volume_node(scene)
    runner = ClassifyRunner()
    job = runner.classify([vol], card, device="cpu", wait_for_completion=False)
    with pytest.raises(RuntimeError, match="classification is already running"):
        runner.classify([vol], card, device="cpu", wait_for_completion=False)
    with pytest.raises(ValueError, match="input volume is not set"):
        ClassifyRunner().classify([vol, None], card)
    assert isinstance(job.wait(timeout=60), ClassifyOutput)
