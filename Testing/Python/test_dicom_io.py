"""DICOM reading (several series, multi-frame, gantry tilt, pydicom's own files) and SEG/SR writing, validated by dciodvfy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from conftest import oblique_affine
from dicom_helpers import dciodvfy_errors, write_series

from medai.dicom import DicomError
from medai.dicom.codes import Algorithm, parse_terminology
from medai.dicom.seg import read_seg, write_seg
from medai.dicom.sr import write_classification_sr, write_segmentation_sr
from medai.geometry import LPS_TO_RAS, Volume
from medai.io import read_image, write_volume
from medai.results import Label, SegmentationResult

BRAIN = "SCT^123037004^Anatomical Structure~SCT^12738006^Brain~^^~Anatomic codes - DICOM master list~^^~^^|"


def blob_volume(affine=None, shape=(12, 20, 24)) -> Volume:
    arr = np.zeros(shape, dtype=np.int16)
    arr[2:8, 5:15, 6:18] = 100
    arr[4:6, 8:12, 9:14] = 300  # asymmetric along k: a flipped slice order would show
    return Volume(arr, oblique_affine() if affine is None else affine, name="blob")


def world_points(volume: Volume, values) -> np.ndarray:
    """RAS centres of the voxels holding one of ``values``, sorted (independent of index order)."""
    kji = np.argwhere(np.isin(volume.array, values))
    ijk1 = np.c_[kji[:, ::-1], np.ones(len(kji))]
    return np.sort((volume.ijk_to_ras @ ijk1.T).T[:, :3], axis=0)


@pytest.mark.parametrize("affine", [oblique_affine(), np.diag([-0.9, -0.9, 2.0, 1.0]), oblique_affine(flip_x=False)])
def test_series_geometry_is_exact_in_world_space(tmp_path, affine):
    vol = blob_volume(affine)
    write_series(vol, tmp_path / "s")
    read = read_image(tmp_path / "s")
    assert read.array.shape == vol.array.shape
    assert np.allclose(np.abs(np.linalg.det(read.ijk_to_ras)), np.abs(np.linalg.det(vol.ijk_to_ras)), rtol=1e-4)
    assert np.allclose(world_points(read, [300]), world_points(vol, [300]), atol=1e-3)
    assert np.allclose(world_points(read, [100, 300]), world_points(vol, [100, 300]), atol=1e-3)
    assert read.metadata["dicom"].series.modality == "CT"


def test_several_series_need_series_uid(tmp_path):
    vol = blob_volume()
    write_series(vol, tmp_path / "mixed", series_uid="1.2.3.4.1", number=1, description="first")
    write_series(Volume(vol.array * 2, vol.ijk_to_ras), tmp_path / "mixed", series_uid="1.2.3.4.2", number=2, description="second")
    with pytest.raises(DicomError, match=r"2 image series; pick one with --series UID.*1\.2\.3\.4\.1.*1\.2\.3\.4\.2"):
        read_image(tmp_path / "mixed")
    assert read_image(tmp_path / "mixed", series="1.2.3.4.2").array.max() == 600
    with pytest.raises(DicomError, match="no series 9.9"):
        read_image(tmp_path / "mixed", series="9.9")


def test_gantry_tilt_is_resampled_with_a_message(tmp_path, caplog):
    vol = blob_volume(np.diag([1.0, 1.0, 2.0, 1.0]), shape=(10, 16, 16))
    lps = LPS_TO_RAS @ vol.ijk_to_ras
    lps[:3, 2] = [0.0, 2.0 * np.tan(np.radians(15)), 2.0]  # each slice shifted along y: a 15 degree gantry tilt
    write_series(vol, tmp_path / "tilt", ijk_to_lps=lps)
    with caplog.at_level("WARNING"):
        read = read_image(tmp_path / "tilt")
    assert "gantry tilt of 15.00 degrees" in caplog.text
    k_axis = read.ijk_to_ras[:3, 2] / np.linalg.norm(read.ijk_to_ras[:3, 2])
    assert np.allclose(np.abs(k_axis), [0, 0, 1], atol=1e-6)  # orthogonal grid
    assert read.array.shape[1] > 16  # grown to hold the sheared slices
    assert read.metadata["dicom"].resampled
    # the bright block's centre stays where it was in world space
    centre = lambda v, thr: (v.ijk_to_ras @ np.r_[np.argwhere(v.array > thr).mean(axis=0)[::-1], 1])[:3]
    src_centre = (LPS_TO_RAS @ lps @ np.r_[np.argwhere(vol.array > 200).mean(axis=0)[::-1], 1])[:3]
    assert np.allclose(centre(read, 200), src_centre, atol=0.6)
    # a SEG on the resampled grid still references the tilted series and is valid
    result = SegmentationResult(read, [(read.array > 200).astype(np.uint8)], [Label(1, "core", (1, 0, 0))], "m")
    path = write_seg(result, tmp_path / "tilt_seg.dcm")
    assert dciodvfy_errors(path) == []
    assert np.array_equal(read_seg(path, read).layers[0], result.layers[0])


def test_irregular_and_4d_series_are_refused(tmp_path):
    vol = blob_volume(np.diag([1.0, 1.0, 2.0, 1.0]))
    write_series(vol, tmp_path / "gap", series_uid="1.2.3.9", shuffle=False)
    files = sorted((tmp_path / "gap").iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    files[5].unlink()
    with pytest.raises(DicomError, match="irregular"):
        read_image(tmp_path / "gap")


def test_multiframe_enhanced_ct(tmp_path):
    import highdicom as hd

    vol = blob_volume()
    write_series(vol, tmp_path / "single")
    datasets = [pydicom.dcmread(p) for p in sorted((tmp_path / "single").iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=hd.UID(), series_number=5,
                                                       sop_instance_uid=hd.UID(), instance_number=1)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "enhanced.dcm", enforce_file_format=True)
    for path in (tmp_path / "mf", tmp_path / "mf" / "enhanced.dcm"):
        read = read_image(path)
        assert np.allclose(world_points(read, [300]), world_points(vol, [300]), atol=1e-3)
        assert np.allclose(world_points(read, [100, 300]), world_points(vol, [100, 300]), atol=1e-3)


def test_pydicom_test_files_edge_cases(tmp_path):
    from pydicom.data import get_testdata_file

    ct = read_image(get_testdata_file("CT_small.dcm"))  # one slice, 128x128
    assert ct.array.shape == (1, 128, 128)
    assert np.isclose(ct.spacing[0], 0.661468, atol=1e-5)
    with pytest.raises(DicomError, match="holds no image"):
        read_image(get_testdata_file("test-SR.dcm"))
    mr = read_image(get_testdata_file("MR_small.dcm"))
    assert np.array_equal(read_image(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")).array, mr.array)  # compressed: same voxels
    assert np.array_equal(read_image(get_testdata_file("MR_small_RLE.dcm")).array, mr.array)
    path = write_seg(SegmentationResult(ct, [(ct.array > 1000).astype(np.uint8)], [Label(1, "dense", (1, 0, 0))]), tmp_path / "ct.dcm")
    assert dciodvfy_errors(path) == []  # a one-slice SEG of pydicom's CT, with its patient/study attributes
    assert np.array_equal(read_seg(path, ct).layers[0], ct.array > 1000)


def test_nifti_source_gets_a_clear_error(tmp_path):
    vol = blob_volume()
    write_volume(vol, tmp_path / "t1.nii.gz")
    nifti = read_image(tmp_path / "t1.nii.gz")
    result = SegmentationResult(nifti, [(nifti.array > 50).astype(np.uint8)], [Label(1, "blob", (1, 0, 0))], "m")
    with pytest.raises(DicomError, match=r"not read from DICOM.*\.seg\.nrrd, \.nii\.gz"):
        write_seg(result, tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()


def _content_items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def _series_result(tmp_path, labels_layers):
    write_series(blob_volume(), tmp_path / "s")
    read = read_image(tmp_path / "s")
    layers, labels = labels_layers(read)
    return read, SegmentationResult(read, layers, labels, "tiny")


def test_seg_binary_round_trip_and_validates(tmp_path):
    read, result = _series_result(tmp_path, lambda r: ([np.where(r.array > 200, 2, np.where(r.array > 50, 1, 0)).astype(np.uint8)],
                                                       [Label(1, "brain", (0.2, 0.5, 1.0), 0, BRAIN), Label(2, "core", (1, 0, 0))]))
    path = write_seg(result, tmp_path / "seg.dcm", Algorithm("tiny", "1.2", "ab" * 32))
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SegmentationType == "BINARY"
    assert {str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(
        read.metadata["dicom"].sop_instance_uids)
    first = ds.SegmentSequence[0]
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "12738006"
    assert ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"  # default
    algo = first.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("tiny", "1.2") and "ab" * 32 in str(algo.AlgorithmParameters)
    back = read_seg(path)  # the source series lies beside the SEG: full source grid
    assert np.allclose(back.reference.ijk_to_ras, read.ijk_to_ras, atol=1e-4)
    assert np.array_equal(back.labelmap(), result.layers[0])
    assert [lab.name for lab in back.labels] == ["brain", "core"]
    assert parse_terminology(back.labels[0].terminology).type == ("12738006", "SCT", "Brain")


def test_seg_overlapping_and_labelmap_encodings(tmp_path):
    read, result = _series_result(tmp_path, lambda r: ([(r.array > 50).astype(np.uint8), (r.array > 200).astype(np.uint8)],
                                                       [Label(1, "all", (1, 0, 0), 0), Label(1, "core", (0, 1, 0), 1)]))
    path = write_seg(result, tmp_path / "multi.dcm")  # overlapping labels: BINARY, one frame per slice and segment
    assert dciodvfy_errors(path) == []
    assert [np.array_equal(a, b) for a, b in zip(read_seg(path).layers, result.layers)] == [True, True]
    with pytest.raises(DicomError, match="overlapping"):
        write_seg(result, tmp_path / "lm.dcm", encoding="labelmap")
    single = SegmentationResult(read, [result.layers[0] + result.layers[1]], [Label(1, "a", (1, 0, 0)), Label(2, "b", (0, 1, 0))])
    path = write_seg(single, tmp_path / "lm.dcm", encoding="labelmap")  # Label Map SEG (2024): dicom3tools 2022 predates it
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7" and ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    assert np.array_equal(read_seg(path).labelmap(), single.layers[0])


def test_sr_for_segments_and_classification_validates(tmp_path):
    from medai.engine.classify import CaseResult, ClassificationResult
    from medai.explain.localize import Finding

    read, result = _series_result(tmp_path, lambda r: ([(r.array > 50).astype(np.uint8)], [Label(1, "brain", (0.2, 0.5, 1.0), 0, BRAIN)]))
    seg = write_seg(result, tmp_path / "seg.dcm", Algorithm("tiny", "1"))
    for path in (write_segmentation_sr(result, tmp_path / "sr_seg.dcm", Algorithm("tiny", "1"), seg),
                 write_segmentation_sr(result, tmp_path / "sr_noseg.dcm", Algorithm("tiny", "1"))):
        assert dciodvfy_errors(path) == []
    sr = pydicom.dcmread(tmp_path / "sr_seg.dcm")
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert pydicom.dcmread(seg).SOPInstanceUID in evidence and set(read.metadata["dicom"].sop_instance_uids) <= evidence
    values = [float(m.MeasuredValueSequence[0].NumericValue) for m in _content_items(sr) if "MeasuredValueSequence" in m]
    assert values and np.isclose(values[0], result.volume_ml(result.labels[0]), rtol=1e-3)
    case = CaseResult("c", read, np.array([0.3, 0.7]), [1], findings=[Finding("c", "hot spot", "hot spot 1", (1.0, 2.0, 3.0), 0.5, 0.9, 12)])
    cls = ClassificationResult("clf", "classification", ["normal", "tumour"], [case], [0.5, 0.5])
    path = write_classification_sr(cls, tmp_path / "sr_cls.dcm", Algorithm("clf", "2"))
    assert dciodvfy_errors(path) == []
    text = str(pydicom.dcmread(path))
    assert "tumour score" in text and "normal score" in text and "ELLIPSOID" in text


def test_empty_result_still_writes_a_valid_seg(tmp_path):
    write_series(Volume(np.zeros((4, 8, 8), np.int16), np.eye(4)), tmp_path / "s")
    read = read_image(tmp_path / "s")
    path = write_seg(SegmentationResult(read, [np.zeros((4, 8, 8), np.uint8)], [Label(1, "nothing", (1, 0, 0))]), tmp_path / "e.dcm")
    assert dciodvfy_errors(path) == []
    back = read_seg(path)
    assert back.layers[0].shape == (4, 8, 8) and not back.layers[0].any()
