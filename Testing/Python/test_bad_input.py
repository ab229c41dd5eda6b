"""Bad input never yields a confident wrong answer: each case is refused, or flagged in the result and on stderr."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from classify_helpers import SMALL_DENSENET_3D, masked_model, two_squares, write_card
from medai.checks import InputError, heatmap_warnings
from medai.cli import main
from medai.engine.classify import classify
from medai.engine.segment import segment
from medai.geometry import GeometryError, Volume
from medai.io import read_image, write_volume
from medai.models.loader import load_model
from medai.slicer import scene as bridge
from medai.slicer.segment_logic import SegmentLogic
from test_trust import conv_card


def _cube(shape=(16, 18, 20), value=100.0, noise=True) -> np.ndarray:
    arr = np.zeros(shape, np.float32)
    arr[4:12, 5:13, 6:14] = value
    if noise:
        arr += np.random.default_rng(0).random(shape).astype(np.float32)
    return arr


def _write(path: Path, arr: np.ndarray, affine=None) -> Path:
    return write_volume(Volume(arr, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine, "img"), path)


def _segment_cli(tmp_path, *images, card=None, extra=()) -> tuple[int, Path]:
    card = card or conv_card(tmp_path / "model")
    out = tmp_path / "out" / "seg.seg.nrrd"
    code = main(["segment", *map(str, images), "-m", str(card), "-o", str(out), "--device", "cpu", *extra])
    return code, out


def _no_output(tmp_path: Path) -> bool:
    return not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- unreadable files ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_files_are_errors_in_every_format(tmp_path, capsys, suffix):
    full = _write(tmp_path / f"full{suffix}", _cube(shape=(40, 40, 40)) * 37)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    code, out = _segment_cli(tmp_path, cut)
    err = capsys.readouterr().err
    assert code == 1 and "cut" in err and _no_output(tmp_path)
    with pytest.raises((GeometryError, RuntimeError)):
        read_image(cut)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_2d_images_are_errors(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray((np.random.default_rng(0).random((60, 70)) * 255).astype(np.uint8)), str(full))
    assert read_image(full).shape_ijk == (70, 60, 1)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises((GeometryError, RuntimeError)):
        read_image(cut)


def test_truncated_nifti_reader_would_have_read_zeros(tmp_path):
    """The reason for the check: SimpleITK fills the missing half of a cut .nii.gz with zeros, without an error."""
    full = _write(tmp_path / "full.nii.gz", _cube(shape=(40, 40, 40)) + 5)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(cut))) == 0).mean() > 0.2
    with pytest.raises(InputError, match="truncated"):
        read_image(cut)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_nan_and_inf_are_found_in_every_format(tmp_path, capsys, suffix):
    arr = _cube()
    arr[2, 3, 4] = np.nan
    arr[5, 6, 7] = np.inf
    path = _write(tmp_path / f"nan{suffix}", arr)
    code, _ = _segment_cli(tmp_path, path)
    assert code == 1 and "NaN or infinite" in capsys.readouterr().err and _no_output(tmp_path)


def test_nan_in_a_scene_node_is_refused_and_the_scene_kept(tmp_path, scene):
    arr = _cube()
    arr[1, 1, 1] = np.nan
    node = bridge.volume_node_from_volume(scene, Volume(arr, np.eye(4), "n"), name="n")
    before = scene.GetNumberOfNodes()
    with pytest.raises(GeometryError, match="NaN"):
        SegmentLogic().segment([node], str(conv_card(tmp_path / "m")), device="cpu")
    assert scene.GetNumberOfNodes() == before


def test_nifti_with_pixdim_zero_is_not_read_as_1mm(tmp_path):
    path = _write(tmp_path / "p.nii", _cube())
    raw = bytearray(path.read_bytes())
    raw[80:84] = np.float32(0).tobytes()  # pixdim[1]
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="pixdim 0"):
        read_image(path)
    gz = tmp_path / "p.nii.gz"
    gz.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputError, match="will not guess 1 mm"):
        read_image(gz)


# --- images no model can use ---------------------------------------------------------------------


def test_all_zero_volume_is_refused(tmp_path, capsys):
    path = _write(tmp_path / "zero.nii.gz", np.zeros((16, 18, 20), np.float32))
    code, _ = _segment_cli(tmp_path, path)
    assert code == 1 and "constant image" in capsys.readouterr().err and _no_output(tmp_path)


def test_near_constant_volume_is_flagged(tmp_path, capsys):
    arr = np.zeros((30, 30, 30), np.float32)
    arr[14:16, 14:16, 14:16] = 100
    path = _write(tmp_path / "flat.nii.gz", arr)
    code, out = _segment_cli(tmp_path, path)
    err = capsys.readouterr().err
    assert code == 0 and out.exists() and "warning:" in err and "near-constant" in err
    result = segment(load_model(tmp_path / "model" / "medai.json", "cpu"), [read_image(path)])
    assert any("near-constant" in w for w in result.warnings)


def test_channel_that_misses_the_first_input_is_refused(tmp_path, capsys):
    card = conv_card(tmp_path / "two")
    raw = json.loads(card.read_text())
    raw["network"]["in_channels"] = 2
    raw["inputs"] = [{"name": "a"}, {"name": "b"}]
    raw.pop("weights")
    raw["network"] = {"_target_": "torch.nn.Conv3d", "in_channels": 2, "out_channels": 2, "kernel_size": 1}
    torch.save(torch.nn.Conv3d(2, 2, 1).state_dict(), card.parent / "model2.pt")
    raw["weights"] = "model2.pt"
    card.write_text(json.dumps(raw))
    first = _write(tmp_path / "a.nrrd", _cube())
    far = np.diag([1.0, 1.0, 1.0, 1.0])
    far[:3, 3] = [5000.0, 0.0, 0.0]  # 5 m away
    second = _write(tmp_path / "b.nrrd", _cube(), far)
    code, _ = _segment_cli(tmp_path, first, second, card=card)
    assert code == 1 and "does not overlap" in capsys.readouterr().err and _no_output(tmp_path)
    near = np.diag([1.0, 1.0, 1.0, 1.0])
    near[:3, 3] = [15.0, 0.0, 0.0]  # covers a quarter of the first
    partly = _write(tmp_path / "c.nrrd", _cube(), near)
    code, out = _segment_cli(tmp_path, first, partly, card=card)
    assert code == 0 and "covers only" in capsys.readouterr().err


def test_intensity_far_outside_the_cards_range_is_flagged(tmp_path, capsys):
    card = conv_card(tmp_path / "ct")
    raw = json.loads(card.read_text())
    raw["inputs"] = [{"name": "CT", "modality": "CT", "range": [-1024, 3071]}]
    card.write_text(json.dumps(raw))
    path = _write(tmp_path / "mr.nrrd", _cube(value=1e6))
    code, out = _segment_cli(tmp_path, path, card=card)
    err = capsys.readouterr().err
    assert code == 0 and "far outside" in err and "right modality" in err


def test_2d_image_given_to_a_3d_classifier_is_refused(tmp_path, capsys):
    card = write_card(tmp_path / "dense3d", SMALL_DENSENET_3D, {
        "task": "classification", "inputs": [{"name": "CT"}], "classes": ["a", "b", "c"],
        "preprocessing": {"intensity": [{"op": "zscore"}]},
        "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}})
    png = tmp_path / "xray.png"
    sitk.WriteImage(sitk.GetImageFromArray((np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)), str(png))
    out = tmp_path / "out" / "scores.csv"
    code = main(["classify", str(png), "-m", str(card), "-o", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "needs a 3D volume" in err and "single slice" in err and not out.exists()


def test_whole_image_heatmap_that_localises_nothing_is_flagged(tmp_path):
    everywhere = masked_model(tmp_path, torch.ones(40, 40))
    bright = Volume((0.8 + 0.2 * np.random.default_rng(0).random((1, 40, 40))).astype(np.float32), np.eye(4), "flat")
    result = classify(everywhere, [bright], explain=True)
    assert any("hot over" in w for w in result.warnings)
    corner = torch.zeros(40, 40)
    corner[5:18, 5:18] = 1
    local = classify(masked_model(tmp_path, corner), [Volume(two_squares(), np.eye(4), "squares")], explain=True)
    assert not any("heatmap" in w for w in local.warnings)  # a heatmap that does localise is not flagged
    assert heatmap_warnings(np.full((4, 4, 4), 0.3, np.float32), "x")[0].startswith("x: the explanation heatmap is constant")


# --- plausibility of the result -------------------------------------------------------------------


def test_result_outside_the_cards_expected_volume_is_flagged_on_every_path(tmp_path, capsys, scene):
    card = conv_card(tmp_path / "brainish")
    raw = json.loads(card.read_text())
    raw["expected"] = {"volume_ml": {"1": [900, 2300]}}
    card.write_text(json.dumps(raw))
    path = _write(tmp_path / "small.nrrd", _cube())
    code, out = _segment_cli(tmp_path, path, card=card)
    err = capsys.readouterr().err
    assert code == 0 and "bright: 0.5 mL is outside the 900-2300 mL" in err
    node = bridge.volume_node_from_volume(scene, read_image(path), name="small")
    logic = SegmentLogic()
    logic.segment([node], str(card), device="cpu")
    assert any("outside the 900-2300 mL" in w for w in logic.last_result.warnings)
    raw["expected"] = {"volume_ml": {"1": [0.1, 10]}}
    card.write_text(json.dumps(raw))
    assert not segment(load_model(card, "cpu"), [read_image(path)]).warnings


def test_default_card_states_the_expected_brain_volume():
    from medai.models import catalog

    raw = json.loads((catalog.catalog_path().parent / "cards" / "deepbet-brain.json").read_text())
    assert raw["expected"]["volume_ml"]["1"] == [900, 2300]
