"""Scene bridge: MRML volume nodes in, segmentation / labelmap nodes out.

Imports only Slicer's MRML API (``slicer`` from slicer-core works headless) and VTK.
Nothing here touches the scene until a result is complete, so a failed or cancelled run
leaves the scene as it was.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..geometry import GeometryError, Volume
from ..results import SegmentationResult

BINARY_LABELMAP = "Binary labelmap"


def _matrix_to_numpy(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def node_ijk_to_ras(node) -> np.ndarray:
    """The node's own IJK-to-RAS matrix (local coordinates, no parent transform)."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _matrix_to_numpy(m)


def node_to_world(node) -> np.ndarray:
    """The node's linear parent-to-world matrix (identity without a transform); non-linear transforms are refused."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise GeometryError(
            f"{node.GetName()}: it is under a non-linear transform ({parent.GetName()}); harden the transform "
            "(Data module: right-click > Harden transform) before running a model"
        )
    to_world = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(to_world)
    return _matrix_to_numpy(to_world)


def node_ijk_to_world(node) -> np.ndarray:
    """IJK to world RAS, including a linear parent transform; non-linear transforms are refused."""
    return node_to_world(node) @ node_ijk_to_ras(node)


def volume_node_list(input_volumes) -> list:
    """The input volume nodes as a list (one node or a list/tuple of them); an error names a missing one."""
    nodes = list(input_volumes) if isinstance(input_volumes, (list, tuple)) else [input_volumes]
    if not nodes:
        raise GeometryError("no input volume given; select at least one volume node")
    if any(n is None for n in nodes):
        raise GeometryError("an input volume is not set; select a volume node for every model input")
    return nodes


def volume_from_node(node) -> Volume:
    """A :class:`Volume` viewing the node's voxel buffer (no copy), in world geometry."""
    if node is None:
        raise GeometryError("no input volume selected; choose a volume node")
    if not node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLVectorVolumeNode"):
        raise GeometryError(f"{node.GetName()}: {node.GetClassName()} is not a scalar or vector volume")
    if node.IsA("vtkMRMLDiffusionTensorVolumeNode") or node.IsA("vtkMRMLDiffusionWeightedVolumeNode"):
        raise GeometryError(f"{node.GetName()}: diffusion volumes are not supported; extract a scalar volume first")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise GeometryError(f"{node.GetName()}: the volume has no voxels; load image data into it first")
    array = slicer.util.arrayFromVolume(node)
    return Volume(array, node_ijk_to_world(node), name=node.GetName(), metadata={"node_id": node.GetID(), "scene": node.GetScene()})


def _oriented_image(labelmap: np.ndarray, ijk_to_ras: np.ndarray):
    """A ``vtkOrientedImageData`` holding ``labelmap`` ([k, j, i]) on the given geometry."""
    image = slicer.vtkOrientedImageData()
    k, j, i = labelmap.shape
    image.SetDimensions(i, j, k)
    vtk_type = vtk.VTK_UNSIGNED_CHAR if labelmap.dtype == np.uint8 else vtk.VTK_UNSIGNED_SHORT
    data = numpy_support.numpy_to_vtk(np.ascontiguousarray(labelmap).ravel(), deep=True, array_type=vtk_type)
    data.SetNumberOfComponents(1)
    image.GetPointData().SetScalars(data)
    image.SetImageToWorldMatrix(_numpy_to_matrix(ijk_to_ras))
    return image


def fill_segmentation_node(seg_node, result: SegmentationResult, reference_node) -> None:
    """Replace the node's segments with the result's labels (shared labelmaps, one per layer)."""
    ijk_to_ras = node_ijk_to_ras(reference_node)  # local geometry; the parent transform is shared
    segmentation = seg_node.GetSegmentation()
    was_modifying = seg_node.StartModify()
    try:
        segmentation.RemoveAllSegments()
        segmentation.SetSourceRepresentationName(BINARY_LABELMAP) if hasattr(segmentation, "SetSourceRepresentationName") else segmentation.SetMasterRepresentationName(BINARY_LABELMAP)
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        images = [_oriented_image(layer, ijk_to_ras) for layer in result.layers]
        for label in result.labels:
            segment = slicer.vtkSegment()
            segment.SetName(label.name)
            segment.SetColor(*label.color)
            segment.SetLabelValue(int(label.value))
            if label.terminology:
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), label.terminology)
            segment.AddRepresentation(BINARY_LABELMAP, images[label.layer])
            segmentation.AddSegment(segment, segmentation.GenerateUniqueSegmentID(label.name))
        seg_node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
    finally:
        seg_node.EndModify(was_modifying)


def segmentation_node_from_result(result: SegmentationResult, reference_node, output_node=None, name: str | None = None):
    """Put the result into ``output_node`` (its segments replaced) or a new segmentation node.

    The new node is created only here, after the result is complete, so a failed run adds nothing.
    """
    scene = reference_node.GetScene()
    if output_node is None:
        output_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{reference_node.GetName()} {result.model_name}")
        output_node.CreateDefaultDisplayNodes()
    fill_segmentation_node(output_node, result, reference_node)
    return output_node


def labelmap_node_from_result(result: SegmentationResult, reference_node, output_node=None, name: str | None = None):
    """The result as a ``vtkMRMLLabelMapVolumeNode`` with a colour table naming every label."""
    scene = reference_node.GetScene()
    labelmap = result.labelmap()
    display = output_node.GetDisplayNode() if output_node is not None else None
    colors = display.GetColorNode() if display is not None else None
    if colors is None or not colors.IsA("vtkMRMLColorTableNode") or colors.GetAttribute("MedAI.Colors") != "1":
        colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{name or result.model_name} colors")
        colors.SetAttribute("MedAI.Colors", "1")  # ours: refilled, not duplicated, when the labelmap is reused
    colors.SetTypeToUser()
    labels = result.merged_labels()
    colors.SetNumberOfColors(max([lab.value for lab in labels] + [0]) + 1)
    colors.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for lab in labels:
        colors.SetColor(lab.value, lab.name, *lab.color, 1.0)
    if output_node is None:
        output_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name or f"{reference_node.GetName()} labels")
    output_node.SetIJKToRASMatrix(_numpy_to_matrix(node_ijk_to_ras(reference_node)))
    slicer.util.updateVolumeFromArray(output_node, labelmap)
    output_node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
    output_node.CreateDefaultDisplayNodes()
    output_node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    return output_node


def segment_array(seg_node, segment_id: str, reference_node) -> np.ndarray:
    """A segment as a [k, j, i] array on the reference volume's grid (for checks and statistics)."""
    return slicer.util.arrayFromSegmentBinaryLabelmap(seg_node, segment_id, reference_node)


def save_scene_bundle(scene, path: str) -> None:
    """Write the scene as a Slicer data bundle (``.mrb``); relative paths are taken from the working folder."""
    from pathlib import Path

    path = Path(path).resolve()  # Slicer's bundle writer refuses relative paths
    if not scene.WriteToMRB(str(path)):
        raise OSError(f"could not write the scene bundle {path}")


def volume_node_from_volume(scene, volume: Volume, name: str | None = None, node=None):
    """Add (or fill) a scalar/vector volume node holding ``volume`` with its exact geometry."""
    cls = "vtkMRMLVectorVolumeNode" if volume.array.ndim == 4 else "vtkMRMLScalarVolumeNode"
    if node is None:
        node = scene.AddNewNodeByClass(cls, name or volume.name)
    node.SetIJKToRASMatrix(_numpy_to_matrix(volume.ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    node.CreateDefaultDisplayNodes()
    return node


def node_ids(scene) -> set[str]:
    """The IDs of every node in ``scene``."""
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def remove_nodes_added_since(scene, before: set[str]) -> None:
    """Remove the nodes added to ``scene`` since its node IDs were ``before``."""
    for extra in [scene.GetNodeByID(i) for i in node_ids(scene) - before]:
        if extra is not None:
            scene.RemoveNode(extra)


@contextmanager
def all_or_nothing(scene, output_segmentation=None):
    """Scene changes inside the block happen completely or not at all.

    On any exception, nodes added inside the block are removed again and ``output_segmentation``
    (an existing node being refilled) gets its previous segments and transform back.
    """
    before = node_ids(scene)
    backup, old_transform = None, None
    if output_segmentation is not None:
        backup = slicer.vtkSegmentation()
        backup.DeepCopy(output_segmentation.GetSegmentation())
        old_transform = output_segmentation.GetTransformNodeID()
    try:
        yield
    except BaseException:
        if backup is not None:
            output_segmentation.GetSegmentation().DeepCopy(backup)
            output_segmentation.SetAndObserveTransformNodeID(old_transform)
        remove_nodes_added_since(scene, before)
        raise
