"""DICOM in the scene: results of a DICOM volume go under its study; segmentations export as DICOM SEG.

Slicer's own DICOM export (Data module: right-click > Export to DICOM) offers SEG for a
segmentation when its subject-hierarchy item lies under a study and carries the referenced
instance UIDs of its source volume (``DICOM.ReferencedInstanceUIDs``), with that volume as its
reference geometry. :func:`place_in_source_study` sets exactly that. :func:`export_dicom_seg`
writes a SEG directly with MedAI's highdicom writer, from the console or a script::

    from medai.slicer.dicom_export import export_dicom_seg
    export_dicom_seg(segmentationNode, source="/data/CT_series", path="/data/ct_seg.dcm")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import slicer

from ..dicom import DicomError
from ..dicom.codes import Algorithm, algorithm_of
from ..dicom.seg import OTHER_FORMATS, write_seg
from ..geometry import Volume, same_grid
from ..results import Label, SegmentationResult
from . import scene as bridge

log = logging.getLogger(__name__)

INSTANCE_UIDS = "DICOM.instanceUIDs"  # set by Slicer's DICOM loader on volumes it loads
REFERENCED_UIDS = "DICOM.ReferencedInstanceUIDs"  # what Slicer's SEG exporter looks for on a segmentation item


def source_study_item(volume_node) -> int | None:
    """The subject-hierarchy study item above ``volume_node`` (loaded from DICOM), or None."""
    if volume_node is None or volume_node.GetScene() is None:
        return None
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
    item = sh.GetItemByDataNode(volume_node)
    if not item:
        return None
    study_level = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
    parent = sh.GetItemParent(item)
    while parent and parent != sh.GetSceneItemID():
        if sh.GetItemLevel(parent) == study_level:
            return parent
        parent = sh.GetItemParent(parent)
    return None


def place_in_source_study(result_node, source_volume_node) -> bool:
    """Put ``result_node`` under the study of ``source_volume_node`` with the references Slicer's DICOM export needs.

    Returns False (and changes nothing) when the source volume was not loaded from DICOM.
    """
    study = source_study_item(source_volume_node)
    if study is None:
        return False
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(result_node.GetScene())
    item = sh.GetItemByDataNode(result_node)
    if item:
        sh.SetItemParent(item, study)
    else:
        item = sh.CreateItem(study, result_node)
    uids = source_volume_node.GetAttribute(INSTANCE_UIDS)
    if uids:
        sh.SetItemAttribute(item, REFERENCED_UIDS, uids)
    if result_node.IsA("vtkMRMLSegmentationNode"):
        result_node.SetReferenceImageGeometryParameterFromVolumeNode(source_volume_node)
        result_node.SetNodeReferenceID(result_node.GetReferenceImageGeometryReferenceRole(), source_volume_node.GetID())
    return True


def _reference_volume_node(segmentation_node):
    return segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())


def _files_of(volume_node) -> list[str]:
    """The DICOM files of a volume loaded by Slicer's DICOM module (through its database)."""
    uids = (volume_node.GetAttribute(INSTANCE_UIDS) or "").split() if volume_node is not None else []
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return []
    files = [database.fileForInstance(uid) for uid in uids]
    return files if all(files) else []


def _source_volume(source, segmentation_node) -> Volume:
    """The DICOM source as a MedAI volume with its headers: a series folder, DICOM files, or a volume node loaded from DICOM."""
    from ..dicom.series import read_dicom, read_files

    if source is None:
        source = _reference_volume_node(segmentation_node)
    if isinstance(source, (str, os.PathLike)):
        return read_dicom(Path(source))
    if isinstance(source, (list, tuple)):
        return read_files([Path(p) for p in source])
    files = _files_of(source)
    if not files:
        name = source.GetName() if source is not None else "(no reference volume)"
        raise DicomError(f"{segmentation_node.GetName()}: its source {name} was not loaded from DICOM (or its files are not in "
                         f"the DICOM database); pass source=<DICOM series folder>, or save the segmentation as {OTHER_FORMATS}")
    return read_files([Path(p) for p in files])


def _terminology(segment) -> str:
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value) else ""


def _segment_labels(segmentation) -> list[tuple[str, Label]]:
    out = []
    for n in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(n)
        out.append((segmentation.GetNthSegmentID(n), Label(1, segment.GetName(), tuple(segment.GetColor()), n,
                                                           _terminology(segment) or None)))
    return out


def segmentation_result_from_node(segmentation_node, reference: Volume, reference_node) -> SegmentationResult:
    """Every segment of ``segmentation_node`` as one layer on ``reference_node``'s grid (``reference``'s voxels)."""
    labels = _segment_labels(segmentation_node.GetSegmentation())
    if not labels:
        raise DicomError(f"{segmentation_node.GetName()}: the segmentation has no segments; nothing to export")
    layers = [bridge.segment_array(segmentation_node, sid, reference_node).astype("uint8") for sid, _ in labels]
    return SegmentationResult(reference, layers, [lab for _, lab in labels], segmentation_node.GetName())


def export_dicom_seg(segmentation_node, source=None, path: str | os.PathLike | None = None, algorithm=None,
                     encoding: str = "auto") -> Path:
    """Write ``segmentation_node`` as a DICOM SEG referencing its DICOM source series.

    ``source``: a DICOM series folder or file list, a volume node loaded from DICOM, or None
    (the segmentation's reference volume, when it was loaded from DICOM). ``algorithm``: a
    loaded model or :class:`~medai.dicom.codes.Algorithm` (the SEG then says AUTOMATIC and
    names it), or None (MANUAL). ``path`` defaults to ``<segmentation name>.dcm`` in the
    working folder.
    """
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise TypeError("export_dicom_seg needs a segmentation node")
    reference = _source_volume(source, segmentation_node)
    scene = segmentation_node.GetScene()
    reference_node = _reference_volume_node(segmentation_node)
    temporary = None
    if reference_node is None or not same_grid(bridge.volume_from_node(reference_node), reference):
        temporary = reference_node = bridge.volume_node_from_volume(scene, reference, name="MedAI DICOM export grid")
    try:
        result = segmentation_result_from_node(segmentation_node, reference, reference_node)
    finally:
        if temporary is not None:
            scene.RemoveNode(temporary)
    if algorithm is not None and not isinstance(algorithm, Algorithm):
        algorithm = algorithm_of(algorithm)
    path = Path(path) if path is not None else Path(f"{segmentation_node.GetName()}.dcm")
    return write_seg(result, path, algorithm, encoding)
