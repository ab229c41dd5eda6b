"""``medai segment SERIES -o OUT.dcm`` (DICOM SEG), ``--sr``, ``medai classify --sr`` and ``medai evaluate --ref seg.dcm``."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest
from classify_helpers import SMALL_DENSENET_3D, write_card
from conftest import write_unet_card
from dicom_helpers import dciodvfy_errors, write_series

from medai.cli import main
from medai.dicom.seg import read_seg
from medai.geometry import Volume
from medai.io import read_image, write_volume


@pytest.fixture(scope="module")
def mni_series(mni_files, tmp_path_factory) -> tuple:
    """The MNI152 T1, every 6th voxel (33x39x32, 6 mm), as a DICOM CT-like series with its real LPS geometry."""
    t1 = read_image(mni_files["mni152_t1.nii.gz"])
    small = t1.array[::6, ::6, ::6].astype(np.int16)
    affine = t1.ijk_to_ras.copy()
    affine[:3, :3] *= 6
    folder = tmp_path_factory.mktemp("mni") / "series"
    write_series(Volume(small, affine, "mni"), folder, description="MNI152 T1 (6 mm)")
    return folder, Volume(small, affine, "mni")


def test_segment_writes_seg_that_matches_the_nifti(tmp_path, mni_series, capsys):
    folder, _ = mni_series
    card = write_unet_card(tmp_path / "unet", labels={"1": {"name": "brain", "color": [0.2, 0.6, 1.0],
                                                            "terminology": "SCT^123037004^Anatomical Structure~SCT^12738006^Brain~^^~Anatomic codes - DICOM master list~^^~^^|"}},
                           preprocessing={"orientation": "RAS", "spacing": None, "intensity": [{"op": "zscore"}]})
    seg_path, nii_path, sr_path = tmp_path / "brain.dcm", tmp_path / "brain.nii.gz", tmp_path / "volumes.dcm"
    assert main(["segment", str(folder), "-m", str(card), "-o", str(seg_path), "--sr", str(sr_path)]) == 0
    assert main(["segment", str(folder), "-m", str(card), "-o", str(nii_path)]) == 0
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    nifti = read_image(nii_path)
    back = read_seg(seg_path, reference=read_image(folder))
    assert np.allclose(back.reference.ijk_to_ras, nifti.ijk_to_ras, atol=1e-4)
    assert np.count_nonzero(nifti.array) > 0
    assert np.array_equal(back.labelmap(), nifti.array)  # voxel for voxel on the source grid
    ds = pydicom.dcmread(seg_path)
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "unet" and "sha256" in str(algo.AlgorithmParameters)
    sr = pydicom.dcmread(sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    # the SEG read back is a reference for medai evaluate: Dice 1 against the NIfTI of the same run
    assert main(["evaluate", "--pred", str(nii_path), "--ref", str(seg_path), "-o", str(tmp_path / "eval")]) == 0
    assert "Dice 1.0000" in capsys.readouterr().out


def test_dicom_outputs_need_dicom_input(tmp_path, capsys):
    image = write_volume(Volume(np.zeros((8, 8, 8), np.int16), np.eye(4)), tmp_path / "t1.nii.gz")
    card = write_unet_card(tmp_path / "unet")
    assert main(["segment", str(image), "-m", str(card), "-o", str(tmp_path / "out.dcm")]) == 1
    err = capsys.readouterr().err
    assert "not read from DICOM" in err and ".seg.nrrd, .nii.gz, .nrrd or .mha" in err
    assert not (tmp_path / "out.dcm").exists()


def test_classify_writes_a_valid_sr(tmp_path, mni_series):
    folder, _ = mni_series
    card = write_card(tmp_path / "dense3d", SMALL_DENSENET_3D, {
        "task": "classification", "inputs": [{"name": "T1"}], "classes": ["normal", "atrophy", "lesion"],
        "preprocessing": {"orientation": "RAS", "intensity": [{"op": "zscore"}]},
        "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}})
    sr_path = tmp_path / "report.dcm"
    assert main(["classify", str(folder), "-m", str(card), "-o", str(tmp_path / "scores.csv"), "--explain",
                 str(tmp_path / "heat.nii.gz"), "--sr", str(sr_path)]) == 0
    assert dciodvfy_errors(sr_path) == []
    row = next(csv.DictReader(open(tmp_path / "scores.csv")))
    text = str(pydicom.dcmread(sr_path))
    for name in ("normal", "atrophy", "lesion"):
        assert f"{name} score" in text
    assert f"'{row['predicted']}'" in text  # the predicted class as the finding
    assert "hot spot" in text and "ELLIPSOID" in text


@pytest.mark.slow
def test_default_model_writes_seg_of_the_mni152_series(tmp_path, mni_files):
    """Done-when of issue 13: deepbet-brain on the MNI152 T1 as a DICOM series -> SEG == NIfTI, dciodvfy clean."""
    t1 = read_image(mni_files["mni152_t1.nii.gz"])
    folder = tmp_path / "series"
    write_series(Volume(t1.array.astype(np.int16), t1.ijk_to_ras, "mni"), folder, description="MNI152 T1")
    seg_path, nii_path = tmp_path / "brain.dcm", tmp_path / "brain.nii.gz"
    assert main(["segment", str(folder), "-m", "deepbet-brain", "-o", str(seg_path)]) == 0
    assert main(["segment", str(folder), "-m", "deepbet-brain", "-o", str(nii_path)]) == 0
    assert dciodvfy_errors(seg_path) == []
    nifti = read_image(nii_path)
    assert np.array_equal(read_seg(seg_path).labelmap(), nifti.array)
    assert np.count_nonzero(nifti.array) > 1_000_000
