"""The ``medai`` command line on real files, and its outputs read back by SimpleITK and Slicer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from conftest import REPO, oblique_affine
from dicom_helpers import write_sitk_series
from medai.io import read_image, write_volume
from medai.models import catalog
from test_segment_engine import cube_volume, threshold_card


def medai(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medai.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture
def image_and_card(tmp_path) -> tuple[Path, Path]:
    image = write_volume(cube_volume(affine=oblique_affine()), tmp_path / "ct.nii.gz")
    return image, threshold_card(tmp_path / "thr")


@pytest.mark.parametrize("suffix", [".seg.nrrd", ".nii.gz", ".nrrd", ".mha"])
def test_segment_writes_output_on_the_input_geometry(tmp_path, image_and_card, suffix):
    image, card = image_and_card
    out = tmp_path / f"result{suffix}"
    proc = medai("segment", str(image), "--model", str(card), "-o", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "bright" in proc.stdout and str(out) in proc.stdout
    src, res = sitk.ReadImage(str(image)), sitk.ReadImage(str(out))
    assert res.GetSize() == src.GetSize()
    assert np.allclose(res.GetOrigin(), src.GetOrigin(), atol=1e-4)
    assert np.allclose(res.GetDirection(), src.GetDirection(), atol=1e-6)
    assert np.allclose(res.GetSpacing(), src.GetSpacing(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(res) == 1, sitk.GetArrayFromImage(src) > 50)


def test_seg_nrrd_opens_in_slicer_with_names_colours_and_geometry(tmp_path, image_and_card, scene):
    image, card = image_and_card
    out = tmp_path / "result.seg.nrrd"
    assert medai("segment", str(image), "-m", str(card), "-o", str(out)).returncode == 0
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage.SetFileName(str(out))
    assert storage.ReadData(seg)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "bright"
    assert np.allclose(segment.GetColor(), (1.0, 128 / 255, 0.0), atol=1e-3)
    ref = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    from medai.slicer import scene as bridge

    bridge.volume_node_from_volume(scene, read_image(image), node=ref)
    arr = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetNthSegmentID(0), ref)
    assert np.array_equal(arr > 0, read_image(image).array > 50)


def test_dicom_series_folder_input(tmp_path, image_and_card):
    _, card = image_and_card
    vol = cube_volume(affine=np.diag([0.8, 0.8, 2.0, 1.0]))
    image = sitk.GetImageFromArray(vol.array)
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((10.0, -5.0, 3.0))
    series = write_sitk_series(image, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.1")  # one series UID
    read = read_image(series)
    assert read.array.shape == vol.array.shape
    assert np.allclose(read.spacing, (0.8, 0.8, 2.0), atol=1e-3)
    out = tmp_path / "dicom_seg.nii.gz"
    proc = medai("segment", str(series), "-m", str(card), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(read_image(out).array == 1, vol.array > 50)


def test_models_lists_the_catalog_name_first():
    proc = medai("models")
    assert proc.returncode == 0
    names = [line.split("\t")[0] for line in proc.stdout.strip().splitlines()]
    assert names == [m.name for m in catalog.list_models()]
    assert catalog.default_model_name() in names


def test_errors_are_one_line_and_leave_existing_files_alone(tmp_path, image_and_card):
    image, card = image_and_card
    existing = tmp_path / "keep.nii.gz"
    existing.write_bytes(b"precious")
    cases = [
        (["segment", str(tmp_path / "missing.nii.gz"), "-m", str(card), "-o", str(existing)], "not found"),
        (["segment", str(image), str(image), "-m", str(card), "-o", str(existing)], "expects 1 input channel"),
        (["segment", str(image), "-m", str(tmp_path / "nope.json"), "-o", str(existing)], "no such file"),
        (["segment", str(image), "-m", str(card), "-o", str(tmp_path / "x.png")], "use one of"),
    ]
    for args, message in cases:
        proc = medai(*args)
        assert proc.returncode == 1, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr
    assert existing.read_bytes() == b"precious"
    assert not (tmp_path / "x.png").exists()
