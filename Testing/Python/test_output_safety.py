"""Output safety: no input is overwritten, unwritable outputs are found before the run, files appear whole and on the input's grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medai.cli import main
from medai.geometry import GeometryError, Volume
from medai.io import read_image, write_volume
from test_trust import conv_card, image_file


def _run(*argv) -> int:
    return main([*map(str, argv), "--device", "cpu"])


def test_output_equal_to_the_input_is_refused_and_the_input_kept(tmp_path, capsys):
    img = image_file(tmp_path / "img.nrrd")
    before = img.read_bytes()
    card = conv_card(tmp_path / "m")
    assert _run("segment", img, "-m", card, "-o", img) == 1
    assert "is also an input" in capsys.readouterr().err and img.read_bytes() == before
    link = tmp_path / "link.nrrd"
    os.symlink(img, link)
    assert _run("segment", img, "-m", card, "-o", link) == 1  # the same file under another name
    assert img.read_bytes() == before


def test_classify_outputs_may_not_be_inputs_either(tmp_path, capsys):
    img = image_file(tmp_path / "img.nii.gz")
    before = img.read_bytes()
    assert _run("classify", img, "-m", conv_card(tmp_path / "m"), "-o", tmp_path / "s.csv", "--explain", img) == 1
    assert "is also an input" in capsys.readouterr().err and img.read_bytes() == before
    assert not (tmp_path / "s.csv").exists()


def test_unwritable_output_folder_is_found_before_the_run(tmp_path, capsys):
    img = image_file(tmp_path / "img.nrrd")
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert _run("segment", img, "-m", conv_card(tmp_path / "m"), "-o", blocker / "out" / "seg.nrrd") == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            assert _run("segment", img, "-m", conv_card(tmp_path / "m"), "-o", ro / "seg.nrrd") == 1
            assert "cannot write into" in capsys.readouterr().err and not list(ro.iterdir())
        finally:
            ro.chmod(0o755)


def test_train_checks_its_output_folder_before_reading_data(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["train", "--data", str(tmp_path / "nothing"), "-o", str(blocker / "model")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def _sheared() -> Volume:
    affine = np.eye(4)
    affine[:3, :3] = [[1.0, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]  # non-orthogonal: columns 0 and 1 not at 90 degrees
    affine[:3, 3] = [10.0, -5.0, 3.0]
    arr = np.zeros((10, 12, 14), np.float32)
    arr[3:7, 4:8, 5:9] = 100
    return Volume(arr + np.random.default_rng(0).random(arr.shape).astype(np.float32), affine, "sheared")


def test_sheared_grid_is_never_written_on_another_grid(tmp_path):
    vol = _sheared()
    with pytest.raises(GeometryError, match="cannot hold the grid"):
        write_volume(vol, tmp_path / "s.nii.gz")
    assert not list(tmp_path.iterdir())  # neither the file nor a partial one
    back = read_image(write_volume(vol, tmp_path / "s.nrrd"))
    assert np.allclose(back.ijk_to_ras, vol.ijk_to_ras, atol=1e-5)


def test_segmenting_a_sheared_input_refuses_nifti_and_writes_nrrd_exactly(tmp_path, capsys):
    src = write_volume(_sheared(), tmp_path / "in.nrrd")
    card = conv_card(tmp_path / "m")
    out = tmp_path / "seg.nii.gz"
    assert _run("segment", src, "-m", card, "-o", out) == 1
    assert "write .nrrd, .seg.nrrd or .mha" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))
    good = tmp_path / "seg.nrrd"
    assert _run("segment", src, "-m", card, "-o", good) == 0
    written = sitk.ReadImage(str(good))
    assert np.allclose(written.GetDirection(), sitk.ReadImage(str(src)).GetDirection(), atol=1e-6)


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    vol = _sheared()
    old = tmp_path / "s.nii.gz"
    old.write_bytes(b"the user's file")
    with pytest.raises(GeometryError):
        write_volume(vol, old)
    assert old.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.nii.gz"]


# --- Ctrl-C during training ------------------------------------------------------------------------


def _pairs(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for c in range(n):
        lab = np.zeros((16, 16, 16), np.uint8)
        lab[4 + c:11, 5:12, 3:10] = 1
        img = (lab * 80 + rng.normal(20, 5, lab.shape)).astype(np.float32)
        write_volume(Volume(img, np.eye(4), "i"), folder / f"case{c}.nii.gz")
        write_volume(Volume(lab, np.eye(4), "l"), folder / f"case{c}_label.nii.gz")
    return folder


def _interrupt_at(kind: str, epoch: int):
    def callback(event) -> None:
        if event.phase == kind and event.epoch >= epoch:
            raise KeyboardInterrupt
    return callback


def test_ctrl_c_in_training_leaves_a_loadable_model_or_nothing(tmp_path):
    from medai.models.loader import load_model
    from medai.training import TrainConfig, train
    from medai.training.data import discover

    data = discover(_pairs(tmp_path / "data"), "segmentation")
    config = TrainConfig(network="unet", network_args={"channels": [4, 8], "strides": [2], "num_res_units": 0}, epochs=5,
                         roi_size=[16, 16, 16], samples_per_case=1, batch_size=2, steps_per_epoch=1, device="cpu",
                         augmentation=[], split=(0.5, 0.25, 0.25))
    early = tmp_path / "early"
    with pytest.raises(KeyboardInterrupt):
        train(data, early, config, callback=_interrupt_at("train", 1))  # before any checkpoint: nothing is left
    assert not early.exists()
    later = tmp_path / "later"
    result = train(data, later, config, callback=_interrupt_at("epoch", 2))
    assert result.stopped == "interrupted" and result.card_path == later / "medai.json"
    model = load_model(result.card_path, "cpu")  # the best checkpoint and its card
    assert model.kind == "card" and not list(later.glob("*.partial"))
