"""The card parser is the one reader of a card: every field typed, one spelling per concept, bad cards fail when read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_unet_card
from medai.geometry import Volume
from medai.models.card import ModelCardError, parse_card, read_card
from medai.models.loader import load_model


def _card(**overrides) -> dict:
    card = {"schema": "medai.card/1", "name": "c", "task": "classification", "network": {"_target_": "torch.nn.Identity"},
            "inference": {"mode": "resize", "roi_size": [8, 8]}}
    card.update(overrides)
    return card


@pytest.mark.parametrize("op, message", [
    ({"op": "scale_range", "a_max": 1}, "scale_range needs a_min"),
    ({"op": "scale_range", "a_min": 0, "a_max": 1, "bmax": 2}, "takes no bmax"),
    ({"op": "clip", "min": "low"}, "clip.min must be a number"),
    ({"op": "zscore", "scale": 2}, "takes no scale"),
    ({"op": "scale_range", "a_min": 5, "a_max": 5}, "a_max different from a_min"),
    ({"op": "denoise", "method": "wavelet"}, "denoise method 'wavelet' unknown"),
    ({"op": "normalise"}, "intensity op 'normalise' unknown"),
])
def test_bad_intensity_operation_fails_when_the_card_is_read(tmp_path, op, message):
    path = tmp_path / "medai.json"
    path.write_text(json.dumps(_card(preprocessing={"intensity": [op]})))
    with pytest.raises(ModelCardError, match=message) as info:
        read_card(path)
    assert str(path) in str(info.value) and "preprocessing.intensity[0]" in str(info.value)


def test_schema_version_is_checked():
    with pytest.raises(ModelCardError, match="schema 'medai.card/2' is not one this MedAI reads"):
        parse_card(_card(schema="medai.card/2"), root=__import__("pathlib").Path("."))


def test_roi_size_is_required_for_windowed_and_resized_inference(tmp_path):
    for mode in ("sliding_window", "resize"):
        with pytest.raises(ModelCardError, match=f"roi_size is required for mode '{mode}'"):
            parse_card(_card(inference={"mode": mode}), tmp_path)
    assert parse_card(_card(inference={"mode": "whole"}), tmp_path).stages[0].roi_size is None


def test_activation_defaults_follow_the_task(tmp_path):
    acts = {task: parse_card(_card(task=task), tmp_path).stages[-1].activation for task in ("classification", "multilabel", "regression")}
    assert acts == {"classification": "softmax", "multilabel": "sigmoid", "regression": "none"}
    seg = parse_card(_card(task="segmentation", labels={"1": "x"}), tmp_path)
    assert seg.stages[-1].activation == "softmax"


def test_older_threshold_spellings_are_migrated_to_one_form(tmp_path):
    """Top-level ``threshold`` -> the last stage's inference.threshold; top-level ``thresholds`` -> per-class thresholds."""
    top = parse_card(_card(task="multilabel", threshold=0.3), tmp_path)
    assert top.threshold == 0.3 and top.stages[-1].threshold == 0.3
    as_list = parse_card(_card(task="multilabel", classes=["a", "b", "c"], thresholds=[0.1, 0.9, None]), tmp_path)
    assert as_list.classes == ["a", "b", "c"] and as_list.class_thresholds == [0.1, 0.9, None]
    as_dict = parse_card(_card(task="multilabel", classes=["a", {"name": "b", "threshold": 0.7}], thresholds={"a": 0.2}), tmp_path)
    assert as_dict.class_thresholds == [0.2, 0.7]
    # the one form itself
    new = parse_card(_card(task="multilabel", classes=[{"name": "a", "threshold": 0.4}, "b"],
                           inference={"mode": "resize", "roi_size": [8, 8], "threshold": 0.6}), tmp_path)
    assert new.class_thresholds == [0.4, None] and new.threshold == 0.6


def test_region_margin_default_and_range_checked_when_read(tmp_path):
    assert parse_card(_card(), tmp_path).stages[-1].region_margin == 0.1
    assert parse_card(_card(inference={"mode": "resize", "roi_size": [8, 8], "region_margin": 0}), tmp_path).stages[-1].region_margin == 0.0
    with pytest.raises(ModelCardError, match="region_margin 11.0 is not a fraction"):
        parse_card(_card(inference={"mode": "resize", "roi_size": [8, 8], "region_margin": 11}), tmp_path)
    with pytest.raises(ModelCardError, match="overlap must be a number"):
        parse_card(_card(inference={"mode": "resize", "roi_size": [8, 8], "overlap": "half"}), tmp_path)


def test_stage_defaults_live_in_one_place(tmp_path):
    from medai.models.card import Stage

    stage = parse_card(_card(inference={"mode": "whole"}), tmp_path).stages[0]
    for name in ("overlap", "sw_batch_size", "resize_mode", "threshold", "crop_margin", "largest_component", "orientation"):
        assert getattr(stage, name) == getattr(Stage, name), name


def test_multilabel_segmentation_thresholds_each_layer_at_the_card_threshold(tmp_path):
    """A top-level threshold (older spelling) decides every overlapping layer; moving it changes the masks."""
    from medai.engine.segment import segment

    labels = {"1": "a", "2": "b"}
    vol = Volume(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), np.eye(4), name="v")
    sizes = []
    for thr in (0.2, 0.8):
        path = write_unet_card(tmp_path / f"ml{thr}", labels=labels, task="multilabel", threshold=thr,
                               inference={"mode": "sliding_window", "roi_size": [16, 16, 16], "activation": "sigmoid"})
        raw = json.loads(path.read_text())
        raw["network"]["out_channels"] = 2  # one sigmoid channel per label, no background
        from monai.networks.nets import UNet

        torch.manual_seed(0)
        net = UNet(**{k: v for k, v in raw["network"].items() if k != "_target_"})
        torch.save(net.state_dict(), path.parent / "model.pt")
        from medai.fetch import sha256_of

        raw["sha256"] = sha256_of(path.parent / "model.pt")
        path.write_text(json.dumps(raw))
        result = segment(load_model(path, "cpu"), [vol])
        assert len(result.layers) == 2 and [lab.layer for lab in result.labels] == [0, 1]
        sizes.append(sum(int(layer.sum()) for layer in result.layers))
    assert sizes[0] > sizes[1]  # a lower threshold keeps more voxels


def test_expected_volume_ranges_are_typed_and_checked_when_read(tmp_path):
    card = parse_card(_card(task="segmentation", labels={"1": "brain"}, expected={"volume_ml": {"1": [900, 2300]}}), tmp_path)
    assert card.expected_volume_ml == {1: (900.0, 2300.0)}
    for bad in ({"volume_ml": {"1": [2300, 900]}}, {"volume_ml": {"brain": [1, 2]}}, {"volume_ml": {"1": "big"}}, [1, 2]):
        with pytest.raises(ModelCardError, match="expected"):
            parse_card(_card(task="segmentation", labels={"1": "brain"}, expected=bad), tmp_path)
