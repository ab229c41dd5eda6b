"""The shipped catalog classifier on real data: mni-tissue-patch-resnet on the MNI152 T1, a markups ROI as the region."""

from __future__ import annotations

import numpy as np
import pytest
import slicer

from medai.engine.classify import region_margin
from medai.io import read_image
from medai.models.card import ModelCardError
from medai.models.loader import load_model
from medai.slicer.classify_logic import ClassifyLogic
from medai.slicer.scene import node_ijk_to_ras, volume_node_from_volume

MODEL = "mni-tissue-patch-resnet"


def _voxel(volume, ras) -> tuple[int, int, int]:
    """(k, j, i) of the voxel nearest to ``ras``."""
    i, j, k = np.round(np.linalg.inv(volume.ijk_to_ras) @ np.r_[ras, 1.0])[:3].astype(int)
    return int(k), int(j), int(i)


@pytest.mark.parametrize("ras, tissue, expected", [
    ((26.0, -10.0, 28.0), "wm", "white matter"),  # deep white matter (corona radiata), right hemisphere
    ((50.0, -20.0, 10.0), "gm", "grey matter"),  # lateral temporal cortex (superior temporal gyrus)
])
def test_tissue_patch_classifier_on_mni_t1(scene, mni_files, ras, tissue, expected):
    t1 = read_image(mni_files["mni152_t1.nii.gz"])
    tissue_map = read_image(mni_files[f"mni152_{tissue}.nii.gz"])
    kji = _voxel(t1, ras)
    assert np.allclose(tissue_map.ijk_to_ras, t1.ijk_to_ras)
    assert tissue_map.array[kji] >= 0.8 * tissue_map.array.max(), f"{ras} is not {expected} in the template's {tissue.upper()} map"
    node = volume_node_from_volume(scene, t1)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "patch")
    roi.SetCenter(*ras)
    roi.SetSize(16.0, 16.0, 16.0)  # the model's 16 mm patch (the template is 1 mm)
    out = ClassifyLogic().classify([node], MODEL, region=roi, device="cpu")
    res = out.result
    assert res.class_names == ["grey matter", "other", "white matter"]
    case = res.cases[0]
    assert res.predicted_names(case) == [expected], f"{ras}: scores {dict(zip(res.class_names, case.scores.round(3)))}"
    assert out.table_node.GetAttribute("MedAI.PredictedClass") == expected
    # heatmap on the input grid, non-zero only in the ROI's box (the card's region_margin is 0), peaking near the point
    heat = out.heatmap_node
    assert heat.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()
    np.testing.assert_allclose(node_ijk_to_ras(heat), node_ijk_to_ras(node), atol=1e-9)
    arr = slicer.util.arrayFromVolume(heat)
    assert arr.max() == pytest.approx(1.0)
    lit = np.argwhere(arr > 0)
    assert np.all(np.abs(lit - np.array(kji)) <= 8), "heatmap lit outside the ROI's box: was a margin added?"
    spots = [f for f in res.findings if f.kind == "hot spot"]
    assert spots and np.linalg.norm(np.array(spots[0].position_ras) - np.array(ras)) < 12.0


def test_region_margin_comes_from_the_card(tmp_path):
    from classify_helpers import keras_pneumonia_card

    assert region_margin(load_model(MODEL, "cpu")) == 0.0  # a patch classifier: the region's box is the whole patch
    card = keras_pneumonia_card(tmp_path / "cnn")
    assert region_margin(load_model(card, "cpu")) == 0.1 and region_margin(load_model(card, "cpu"), 0.3) == 0.3
    raw = card.read_text().replace('"activation": "sigmoid"', '"activation": "sigmoid", "region_margin": "wide"')
    (tmp_path / "cnn" / "bad.json").write_text(raw)
    with pytest.raises(ModelCardError, match="region_margin"):
        region_margin(load_model(tmp_path / "cnn" / "bad.json", "cpu"))
