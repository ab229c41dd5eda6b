"""The shipped trained models: catalog entries resolve to the repository folder, load, and do what their cards claim."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medai.models import catalog
from medai.models.loader import load_model
from medai.training.sample_data import tissue_labels


def _entry(name):
    entry = catalog.find_model(name)
    if entry is None or not (catalog.fetch_model(entry) / "medai.json").exists():
        pytest.skip(f"{name} is not trained in this checkout; run bash scripts/train_default_models.sh")
    return entry


def test_tissue_unet_segments_the_template_in_a_scene(scene, mni_files):
    from medai.io import read_image
    from medai.metrics import dice
    from medai.slicer.scene import segment_array, volume_node_from_volume
    from medai.slicer.segment_logic import SegmentLogic

    entry = _entry("mni-tissue-unet")
    folder = catalog.fetch_model(entry)
    assert folder.name == "mni-tissue-unet" and folder.parent.name == "Models"  # used in place, not copied
    card = json.loads((folder / "medai.json").read_text())
    assert "DERIVED" in entry.description and "derived" in card["training"]["data"]["description"].lower()
    assert card["training"]["metrics"]["test"]["mean_dice"] > 0.6
    t1 = read_image(mni_files["mni152_t1.nii.gz"])
    node = volume_node_from_volume(scene, t1, "MNI152 T1")
    seg = SegmentLogic().segment(node, "mni-tissue-unet", device="cpu")
    ref = tissue_labels(read_image(mni_files["mni152_gm.nii.gz"]).array, read_image(mni_files["mni152_wm.nii.gz"]).array)
    ids = {seg.GetSegmentation().GetNthSegment(n).GetName(): seg.GetSegmentation().GetNthSegmentID(n) for n in range(2)}
    wm = segment_array(seg, ids["white matter"], node) > 0
    assert dice(wm, ref == 2) > 0.7


def test_tissue_patch_classifier_loads_with_classes(mni_files):
    entry = _entry("mni-tissue-patch-resnet")
    model = load_model(entry.name, "cpu")
    assert model.card.task == "classification"
    assert model.card.raw["classes"] == ["grey matter", "other", "white matter"]
    assert model.card.raw["training"]["metrics"]["test"]["accuracy"] > 0.6
    from medai.evaluate import classify_volumes
    from medai.io import read_image

    t1 = read_image(mni_files["mni152_t1.nii.gz"])
    wm = read_image(mni_files["mni152_wm.nii.gz"]).array
    k, j, i = np.argwhere(wm > 250)[len(np.argwhere(wm > 250)) // 2]  # a voxel deep in white matter
    from medai.training.sample_data import _sub

    patch = _sub(t1, t1.array, (slice(k - 8, k + 8), slice(j - 8, j + 8), slice(i - 8, i + 8)), "wm patch")
    probs = classify_volumes(model, [patch])
    assert model.card.raw["classes"][int(np.argmax(probs))] == "white matter"
