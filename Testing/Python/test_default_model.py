"""The default catalog model (deepbet's two TorchScript networks) on the real MNI152 template."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO
from medai.demo import PLAUSIBLE_MASK_ML, run_demo, tissue_coverage
from medai.engine.segment import segment
from medai.io import read_image
from medai.models import catalog
from medai.models.loader import load_model


@pytest.fixture(scope="module")
def brain_result(mni_files):
    model = load_model(catalog.default_model_name(), "cpu")
    volume = read_image(mni_files["mni152_t1.nii.gz"])
    return volume, segment(model, [volume])


def test_default_model_covers_grey_and_white_matter(brain_result, mni_files):
    volume, result = brain_result
    label = result.labels[0]
    assert label.name == "brain"
    mask = result.mask(label)
    assert mask.shape == volume.array.shape
    coverage, _ = tissue_coverage(mask, read_image(mni_files["mni152_gm.nii.gz"]).array, read_image(mni_files["mni152_wm.nii.gz"]).array)
    assert coverage > 0.99, coverage
    ml = result.volume_ml(label)
    assert PLAUSIBLE_MASK_ML[0] <= ml <= PLAUSIBLE_MASK_ML[1], ml
    # not everything: the background around the head stays outside
    assert mask.mean() < 0.6


def test_default_model_matches_deepbets_own_pipeline_voxel_count(brain_result):
    """deepbet's BrainExtraction.run gives 1,953,144 brain voxels on this template (checked by hand, see README);
    the cascade reproduces it only with both stages sharing the first stage's percentiles and the same crop."""
    _, result = brain_result
    assert result.voxel_count(result.labels[0]) == 1_953_144


def test_default_model_is_orientation_independent(brain_result, mni_files):
    """The same head stored LPS-flipped and axis-permuted gives the same mask in world space."""
    volume, result = brain_result
    image = sitk.ReadImage(str(mni_files["mni152_t1.nii.gz"]))
    flipped = sitk.PermuteAxes(sitk.Flip(image, [True, True, False]), [1, 0, 2])
    from medai.io import volume_from_sitk

    other = volume_from_sitk(flipped, "permuted")
    again = segment(load_model(catalog.default_model_name(), "cpu"), [other])
    mask = again.layers[0] > 0
    # map back to the original index order: undo the permutation then the flips
    back = np.flip(np.flip(mask.transpose(0, 2, 1), axis=2), axis=1)
    original = result.layers[0] > 0
    dice = 2 * (back & original).sum() / (back.sum() + original.sum())
    assert dice > 0.99, dice


def test_demo_writes_scene_segmentation_overlay_and_report(tmp_path, mni_files):
    report = run_demo(tmp_path, device="cpu")
    files = report["files"]
    with zipfile.ZipFile(files["scene"]) as z:
        names = z.namelist()
    assert any(n.endswith(".mrml") for n in names)
    assert any(n.endswith(".seg.nrrd") for n in names) and any(n.endswith(".nii.gz") or n.endswith(".nrrd") for n in names)
    header = sitk.ReadImage(files["segmentation"])
    assert header.GetMetaData("Segment0_Name") == "brain"
    assert (tmp_path / "overlay.png").stat().st_size > 10_000
    text = (tmp_path / "report.md").read_text()
    assert "inference" in text and "mL" in text and "grey+white matter covered" in text
    assert report["check"]["mask volume plausible"] is True
    # the bundle opens again as a scene: the volume and the segmentation with its named segment
    from medai.slicer.headless import make_headless_slicer
    import slicer

    scene = make_headless_slicer()
    assert scene.ReadFromMRB(files["scene"])
    seg = scene.GetNodesByClass("vtkMRMLSegmentationNode").GetItemAsObject(0)
    volume = scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetItemAsObject(0)
    assert seg.GetSegmentation().GetNthSegment(0).GetName() == "brain"
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, seg.GetSegmentation().GetNthSegmentID(0), volume)
    assert int(mask.sum()) == report["labels"][0]["voxels"]


def test_demo_command_prints_where_files_are(tmp_path, mni_files):
    """As a newcomer runs it: a relative output folder (``-o out``) from the working folder."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "medai.cli", "demo", "-o", "out", "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "out/demo.mrb" in proc.stdout and "brain" in proc.stdout
    with zipfile.ZipFile(tmp_path / "out" / "demo.mrb") as z:
        assert any(n.endswith(".mrml") for n in z.namelist())
