"""The panels' Train section below the widget, headless with real MRML and real torch: TrainRunner runs,
progress on the calling thread, cancel keeping the best checkpoint, the model listed and segmenting at once."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from medai.engine.progress import Cancelled
from medai.geometry import Volume
from medai.models.loader import load_model
from medai.results import Label, SegmentationResult
from medai.slicer import panel
from medai.slicer import scene as bridge
from medai.slicer.jobs import CANCELLED, SUCCEEDED, MainThreadQueue, TrainOutput, TrainRunner
from medai.slicer.training_bridge import segmentation_pairs_in_scene
from medai.training import TrainConfig

TINY_NET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def tiny_config(**kw) -> TrainConfig:
    base = dict(task="segmentation", network="unet", network_args=TINY_NET, epochs=2, roi_size=[16, 16, 16],
                spacing=None, orientation=None, samples_per_case=2, batch_size=2, steps_per_epoch=2, lr=5e-3,
                warmup_epochs=0, device="cpu", patience=20, split=(0.5, 0.5, 0.0), augmentation=[], evaluate_test=False)
    base.update(kw)
    return TrainConfig(**base)


def _case(scene, n: int, size: int = 24):
    """A 24^3 volume with a bright cube and a segmentation of the cube drawn on it."""
    rng = np.random.default_rng(n)
    array = rng.normal(0, 0.2, (size, size, size)).astype(np.float32)
    label = np.zeros(array.shape, np.uint8)
    lo = 6 + n
    label[lo:lo + 10, lo:lo + 10, lo:lo + 10] = 1
    array[label > 0] += 2.0
    volume = Volume(array, np.diag([2.0, 2.0, 2.0, 1.0]), name=f"case{n}")
    node = bridge.volume_node_from_volume(scene, volume, f"case{n}")
    seg = bridge.segmentation_node_from_result(
        SegmentationResult(volume, [label], [Label(1, "cube", (1.0, 0.0, 0.0))]), node, name=f"case{n} cube")
    return node, seg


def _ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


@pytest.fixture
def pairs(scene):
    pairs = [_case(scene, n) for n in range(2)]
    scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")  # no reference, no segments: not offered
    return pairs


def test_scene_pairs_are_the_segmentations_with_their_reference_volume(scene, pairs):
    found = segmentation_pairs_in_scene(scene)
    assert [(v.GetID(), s.GetID()) for v, s in found] == [(v.GetID(), s.GetID()) for v, s in pairs]


def test_train_waits_then_chart_table_and_model_listed_and_segmenting(scene, pairs, tmp_path):
    imported: list[str] = []
    texts, threads = [], set()

    def progress(fraction, text):
        texts.append((fraction, text))
        threads.add(threading.get_ident())

    def register(spec):  # what the Train section does with the application settings
        imported[:] = panel.add_model(imported, spec)

    before = _ids(scene)
    out = TrainRunner().train(pairs, tmp_path / "cube-unet", tiny_config(name="cube-unet"), progress=progress,
                              register=register)
    assert isinstance(out, TrainOutput) and out.model_dir == tmp_path / "cube-unet"
    assert (out.model_dir / "medai.json").exists() and (out.model_dir / "model.pt").exists()
    assert threads == {threading.get_ident()}  # progress ran on this (main) thread
    assert any(t.startswith("epoch 2/2, loss ") and "left" in t for _, t in texts), texts
    assert any("dice " in t for _, t in texts)  # the validation metric, once an epoch was validated
    # the chart and the metrics table are in the scene, one row per epoch
    assert out.chart.IsA("vtkMRMLPlotChartNode") and out.chart.GetNumberOfPlotSeriesNodes() == 2
    assert out.table.GetTable().GetNumberOfRows() == 2 and out.table.GetName() == "cube-unet training metrics"
    assert {out.chart.GetID(), out.table.GetID()} <= _ids(scene) - before
    # listed at once among the segmentation panel's models, as trained, and not in the classification panel
    choices = panel.model_choices("segmentation", imported)
    assert choices[-1].spec == str(out.model_dir.resolve()) and choices[-1].title == "cube-unet (trained)"
    assert all(c.spec != choices[-1].spec for c in panel.model_choices("classification", imported))
    # and it segments the scene through the same logic the Segment panel runs
    from medai.slicer.segment_logic import SegmentLogic

    seg = SegmentLogic().segment(pairs[0][0], choices[-1].spec, device="cpu")
    assert seg.GetSegmentation().GetNthSegment(0).GetName() == "cube"


def test_train_without_wait_reports_events_then_completes(scene, pairs, tmp_path):
    queue = MainThreadQueue()
    done, events, fractions = [], [], []
    job = TrainRunner(queue).train(pairs, tmp_path / "m", tiny_config(), wait_for_completion=False,
                                   progress=lambda f, t: fractions.append(f), completed=done.append,
                                   on_event=events.append)
    assert not done and not events  # nothing reaches this thread until the queue is drained
    deadline = time.time() + 60
    while not job.done and time.time() < deadline:
        queue.process_pending(timeout=0.05)
    assert done == [job] and job.state == SUCCEEDED, job.error
    assert job.model_dir == tmp_path / "m"
    epochs = [e for e in events if e.phase == "epoch"]
    assert [e.epoch for e in epochs] == [1, 2] and all(e.loss is not None and e.eta_s is not None for e in epochs)
    assert fractions and fractions[-1] == 1.0


def test_cancel_keeps_best_checkpoint_and_adds_no_node(scene, pairs, tmp_path):
    queue = MainThreadQueue()
    runner = TrainRunner(queue)
    folder = tmp_path / "cancelled"

    def on_event(event):  # main thread: cancel once epoch 1 is validated and saved, inside epoch 2
        if event.phase == "train" and event.epoch == 2:
            runner.job.cancel()

    before = _ids(scene)
    registered: list[str] = []
    job = runner.train(pairs, folder, tiny_config(epochs=6), wait_for_completion=False, on_event=on_event,
                       register=registered.append)
    with pytest.raises(Cancelled):
        job.wait(timeout=60)
    assert job.state == CANCELLED and job.output is None and not registered
    assert _ids(scene) == before  # no chart, no table
    assert job.train_result.stopped == "cancelled" and job.train_result.best_epoch == 1
    card = json.loads((folder / "medai.json").read_text())
    assert card["training"]["stopped"] == "cancelled"
    model = load_model(folder, "cpu")
    assert model.card.task == "segmentation" and [lab.name for lab in model.labels] == ["cube"]


def test_source_errors_name_the_input(scene, pairs, tmp_path):
    runner = TrainRunner()
    with pytest.raises(ValueError, match="check at least one volume"):
        runner.train([], tmp_path / "x", tiny_config())
    with pytest.raises(ValueError, match="table node"):
        runner.train(pairs[0][0], tmp_path / "x", tiny_config())
    with pytest.raises(ValueError, match="configuration asks for classification"):
        runner.train(pairs, tmp_path / "x", tiny_config(task="classification"))
    with pytest.raises(ValueError, match="output folder"):
        runner.train(pairs, "", tiny_config())


def test_classification_from_a_table_node(scene, tmp_path):
    from medai.slicer.training_bridge import table_node_from_rows

    rows = []
    for n in range(4):
        cls = "bright" if n % 2 else "dark"
        array = np.random.default_rng(n).normal(3.0 if n % 2 else 0.0, 0.3, (16, 16, 16)).astype(np.float32)
        node = bridge.volume_node_from_volume(scene, Volume(array, np.diag([2.0, 2.0, 2.0, 1.0]), name=f"v{n}"), f"v{n}")
        rows.append({"volume": node.GetName(), "class": cls})
    table = table_node_from_rows(scene, rows, "labels")
    imported: list[str] = []
    config = tiny_config(task="classification", network="resnet", roi_size=[16, 16, 16], batch_size=2,
                         network_args={"block_inplanes": [4, 8, 16, 32]})
    out = TrainRunner().train(table, tmp_path / "bright", config,
                              register=lambda spec: imported.extend(panel.add_model(imported, spec)))
    assert out.result.metric_name == "accuracy" and out.table.GetTable().GetNumberOfRows() == 2
    assert panel.model_choices("classification", imported)[-1].spec == str(out.model_dir.resolve())
    assert panel.model_classes(str(out.model_dir)) == ["bright", "dark"]


def test_progress_text_folders_and_add_model_errors(tmp_path):
    from medai.models.loader import ModelLoadError
    from medai.training import TrainEvent

    event = TrainEvent("epoch", 3, 20, 4, 4, 0.41234, "dice", 0.73125, 0.742, 2, 10.0, 90.0)
    assert event.text() == "epoch 3/20, loss 0.4123, dice 0.7312, best dice 0.7420 (epoch 2), 1.5 min left"
    assert TrainEvent("train", 1, 2, 1, 4, 0.5, "dice", float("nan"), eta_s=5.0).text() == \
        "epoch 1/2, loss 0.5000, 5 s left"
    assert "validating" in TrainEvent("validate", 2, 5).text()
    assert panel.train_networks("classification") == ["densenet121", "resnet"]
    first = panel.default_train_folder("m", tmp_path)
    first.mkdir()
    assert first == tmp_path / "m" and panel.default_train_folder("m", tmp_path) == tmp_path / "m-2"
    with pytest.raises(ModelLoadError, match="not a model format MedAI reads"):
        panel.add_model([], first)
