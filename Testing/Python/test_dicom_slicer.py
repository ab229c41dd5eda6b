"""In the scene (slicer-core): results of a DICOM volume go under its study, ready for Slicer's SEG export; export_dicom_seg."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import slicer
from conftest import oblique_affine
from dicom_helpers import dciodvfy_errors, write_series
from test_segment_engine import threshold_card

from medai.dicom import DicomError
from medai.dicom.seg import read_seg
from medai.geometry import Volume
from medai.io import read_image
from medai.slicer import scene as bridge
from medai.slicer.dicom_export import REFERENCED_UIDS, export_dicom_seg, place_in_source_study
from medai.slicer.segment_logic import SegmentLogic


def load_like_slicer_dicom(scene, folder):
    """What Slicer's DICOM loader leaves: a volume with its instance UIDs under patient > study > series items."""
    volume = read_image(folder)
    source = volume.metadata["dicom"]
    node = bridge.volume_node_from_volume(scene, volume, name="CT")
    node.SetAttribute("DICOM.instanceUIDs", " ".join(source.sop_instance_uids))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Test^MedAI")
    sh.SetItemUID(patient, "DICOM", "MEDAI001")
    study = sh.CreateStudyItem(patient, "study")
    sh.SetItemUID(study, "DICOM", source.study_uid)
    series = sh.CreateItem(study, node)
    sh.SetItemUID(series, "DICOM", source.series.uid)
    return node, volume, study


@pytest.fixture
def dicom_ct(tmp_path):
    arr = np.zeros((10, 20, 24), np.int16)
    arr[2:8, 5:15, 6:18] = 100
    write_series(Volume(arr, oblique_affine()), tmp_path / "series")
    return tmp_path / "series"


def test_result_goes_under_the_source_study_and_exports_as_seg(scene, tmp_path, dicom_ct):
    node, volume, study = load_like_slicer_dicom(scene, dicom_ct)
    logic = SegmentLogic()
    seg = logic.segment([node], str(threshold_card(tmp_path / "thr")), device="cpu", output_labelmap=True)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert logic.last_labelmap_node is not None
    for made in (seg, logic.last_labelmap_node):
        assert sh.GetItemParent(sh.GetItemByDataNode(made)) == study
    item = sh.GetItemByDataNode(seg)
    assert sh.GetItemAttribute(item, REFERENCED_UIDS).split() == volume.metadata["dicom"].sop_instance_uids
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is node
    out = export_dicom_seg(seg, source=dicom_ct, path=tmp_path / "seg.dcm")
    assert dciodvfy_errors(out) == []
    back = read_seg(out, reference=volume)
    segment_id = seg.GetSegmentation().GetNthSegmentID(0)
    assert np.array_equal(back.layers[0], bridge.segment_array(seg, segment_id, node))
    assert np.count_nonzero(back.layers[0]) > 0
    ds = pydicom.dcmread(out)
    assert ds.StudyInstanceUID == volume.metadata["dicom"].study_uid
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"  # no algorithm given


def test_non_dicom_volume_stays_put_and_export_explains(scene, tmp_path):
    arr = np.zeros((10, 20, 24), np.int16)
    arr[2:8, 5:15, 6:18] = 100
    node = bridge.volume_node_from_volume(scene, Volume(arr, oblique_affine()), name="nifti")
    seg = SegmentLogic().segment([node], str(threshold_card(tmp_path / "thr")), device="cpu")
    assert not place_in_source_study(seg, node)
    with pytest.raises(DicomError, match=r"not loaded from DICOM.*source=<DICOM series folder>.*\.seg\.nrrd"):
        export_dicom_seg(seg, path=tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_export_onto_a_different_grid_uses_the_dicom_grid(scene, tmp_path, dicom_ct):
    """A segmentation drawn on another volume is exported on the DICOM source's own grid."""
    volume = read_image(dicom_ct)
    other = bridge.volume_node_from_volume(scene, Volume(np.zeros((10, 20, 24), np.int16), volume.ijk_to_ras), name="other")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(other)
    seg.SetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole(), other.GetID())
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    labelmap.SetIJKToRASMatrix(bridge._numpy_to_matrix(volume.ijk_to_ras))
    slicer.util.updateVolumeFromArray(labelmap, (volume.array > 50).astype(np.uint8))
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, seg)
    out = export_dicom_seg(seg, source=dicom_ct, path=tmp_path / "manual.dcm")
    assert dciodvfy_errors(out) == []
    assert np.array_equal(read_seg(out).layers[0], volume.array > 50)
