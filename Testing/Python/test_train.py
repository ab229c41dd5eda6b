"""Segmentation training on a tiny real crop of the MNI152 T1 (derived GM/WM labels): learns, resumes, cancels,
and the result loads through the normal loader and segments in a headless scene."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medai.engine.progress import CancelToken
from medai.training import TrainConfig, train
from medai.training.data import discover
from medai.training.sample_data import make_tissue_slabs
from medai.training.split import split_cases

TINY_NET = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}


def tiny_config(**kw) -> TrainConfig:
    base = dict(network="unet", network_args=TINY_NET, epochs=12, roi_size=[32, 32, 8], spacing=[2.0, 2.0, 2.0],
                intensity=[{"op": "percentile_scale", "lower": 0.5, "upper": 99.5}], samples_per_case=4, batch_size=8,
                steps_per_epoch=3, lr=5e-3, warmup_epochs=0, device="cpu", patience=20)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_data(mni_files, tmp_path_factory):
    folder = make_tissue_slabs(mni_files, tmp_path_factory.mktemp("slabs") / "tiny", slab_mm=12, crop=(48, 64, 64))
    return discover(folder, "segmentation")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "tiny-tissue"
    return train(tiny_data, out, tiny_config())


def test_training_reduces_loss_and_reaches_dice(trained):
    losses = [r["loss"] for r in trained.history]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses
    assert trained.best_metric is not None and trained.best_metric > 0.6, trained.history
    card = json.loads((trained.model_dir / "medai.json").read_text())
    assert card["labels"]["1"]["name"] == "grey matter" and card["labels"]["2"]["name"] == "white matter"
    assert card["training"]["split"]["test"] == ["slab02"]  # the dataset's own split, saved with the model
    assert card["training"]["metrics"]["test"]["mean_dice"] > 0.5
    assert card["training"]["augmentation"][0]["name"] == "affine"
    assert (trained.model_dir / "training_curves.png").stat().st_size > 1000
    assert (trained.model_dir / "test" / "per_case.csv").exists()


def test_trained_model_segments_in_headless_scene(trained, tiny_data, scene):
    from medai.io import read_image
    from medai.models.loader import load_model
    from medai.slicer.scene import volume_node_from_volume
    from medai.slicer.segment_logic import SegmentLogic
    from medai.slicer.training_bridge import compare_segmentation_nodes, segmentation_cases_from_scene

    model = load_model(trained.card_path, "cpu")
    assert model.kind == "card" and [lab.name for lab in model.labels] == ["grey matter", "white matter"]
    case = tiny_data.by_id()["slab02"]
    node = volume_node_from_volume(scene, read_image(case.images[0]), "slab02")
    seg = SegmentLogic().segment(node, model)
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    # the reference as a segmentation node, compared inside the scene
    from medai.results import Label, SegmentationResult
    from medai.slicer.scene import segmentation_node_from_result

    ref = read_image(case.label)
    ref_result = SegmentationResult(read_image(case.images[0]), [ref.array.astype(np.uint8)],
                                    [Label(1, "grey matter", (0, 0, 1)), Label(2, "white matter", (1, 1, 1))])
    ref_node = segmentation_node_from_result(ref_result, node, name="reference")
    report, table = compare_segmentation_nodes(seg, ref_node, node)
    dices = {r["label"]: r["dice"] for r in report.summary["per_label"]}
    assert min(dices.values()) > 0.4, dices
    assert table.GetTable().GetNumberOfRows() == 2
    # scene pairs become training data with the segment names as labels
    data = segmentation_cases_from_scene([(node, ref_node)])
    assert data.labels == {1: "grey matter", 2: "white matter"}
    assert np.array_equal(data.cases[0].label_volume.array, ref.array)


def test_resume_continues_where_it_stopped(tiny_data, tmp_path):
    out = tmp_path / "resumed"
    first = train(tiny_data, out, tiny_config(epochs=2, evaluate_test=False))
    ckpt = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert ckpt["epoch"] == 2
    second = train(tiny_data, out, tiny_config(epochs=4, resume=True, evaluate_test=False))
    assert [r["epoch"] for r in second.history] == [1, 2, 3, 4]
    assert second.history[:2] == first.history  # the first two epochs are the saved ones, not re-run
    assert torch.load(out / "checkpoint_last.pt", weights_only=True)["epoch"] == 4
    assert json.loads((out / "medai.json").read_text())["training"]["epochs_run"] == 4


def test_cancel_keeps_best_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "cancelled"
    cancel = CancelToken()
    best_weights = {}

    def on_event(e):
        if e.phase == "epoch" and e.best_epoch == e.epoch:
            best_weights.update({k: v.clone() for k, v in torch.load(out / "model.pt", weights_only=True).items()})
        if e.phase == "train" and e.epoch == 3 and e.step == 2:
            cancel.cancel()

    result = train(tiny_data, out, tiny_config(epochs=10), callback=on_event, cancel=cancel)
    assert result.stopped == "cancelled"
    assert result.best_epoch in (1, 2) and len(result.history) == 2
    saved = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], best_weights[k]) for k in saved)
    card = json.loads((out / "medai.json").read_text())
    assert card["training"]["stopped"] == "cancelled" and "test" not in card["training"]["metrics"]


def test_split_is_reproducible_and_by_case(tiny_data):
    from medai.training.data import Case

    cases = [Case(f"c{i:02d}", target=float(i % 2)) for i in range(20)]
    a, b = split_cases(cases, seed=3), split_cases(cases, seed=3)
    assert a == b and len(a["train"]) == 14 and len(a["validation"]) == 3 and len(a["test"]) == 3
    assert not set(a["train"]) & set(a["test"])
    assert split_cases(cases, seed=4)["test"] != a["test"]
    strat = split_cases(cases, seed=3, stratify=True)
    assert {int(c[1:]) % 2 for c in strat["test"]} == {0, 1}
