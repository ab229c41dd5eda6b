"""Geometry: volume nodes, files and tensors keep every voxel where it was."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import torch
import vtk

from conftest import oblique_affine
from medai.geometry import GeometryError, Volume, reorient_to_ras, to_ijk_array, to_metatensor
from medai.io import read_image, write_volume
from medai.slicer import scene as bridge


def _ramp(shape=(7, 9, 11), dtype=np.int16) -> np.ndarray:
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


def _world(ijk_to_ras: np.ndarray, kji: tuple[int, int, int]) -> np.ndarray:
    k, j, i = kji
    return (ijk_to_ras @ np.array([i, j, k, 1.0]))[:3]


@pytest.mark.parametrize("affine", [
    oblique_affine(),
    np.diag([-0.7, -0.7, 3.0, 1.0]),  # LPS-stored axial (flipped R and A)
    oblique_affine(spacing=(0.5, 0.5, 5.0), angles=(0.0, 0.0, np.pi / 2), flip_x=False),  # permuted axes
])
def test_node_round_trip_is_voxel_exact(scene, affine):
    vol = Volume(_ramp(), affine, name="src")
    node = bridge.volume_node_from_volume(scene, vol)
    back = bridge.volume_from_node(node)
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.ijk_to_ras, affine, atol=1e-9)
    # the bridge views the node's own buffer: a change in the node shows up without a copy
    assert np.shares_memory(back.array, slicer.util.arrayFromVolume(node))


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_file_round_trip_keeps_world_positions(tmp_path, suffix):
    affine = oblique_affine()
    vol = Volume(_ramp(), affine, name="src")
    path = write_volume(vol, tmp_path / f"x{suffix}")
    back = read_image(path)
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.ijk_to_ras, affine, atol=1e-4)
    # SimpleITK's own physical point (LPS) of a voxel equals our RAS point with x, y negated
    image = sitk.ReadImage(str(path))
    lps = np.array(image.TransformIndexToPhysicalPoint((3, 4, 5)))
    assert np.allclose(lps * [-1, -1, 1], _world(affine, (5, 4, 3)), atol=1e-3)


def test_metatensor_is_a_view_with_ras_affine():
    vol = Volume(_ramp(dtype=np.float32), oblique_affine())
    mt = to_metatensor(vol)
    assert mt.shape == (1, 11, 9, 7)  # (C, I, J, K)
    assert np.shares_memory(mt.numpy(), vol.array)
    assert np.allclose(mt.affine.numpy(), vol.ijk_to_ras)
    assert mt[0, 10, 8, 6] == vol.array[6, 8, 10]
    # dtype conversion is the one case that copies
    converted = to_metatensor(Volume(_ramp(), oblique_affine()), dtype=torch.float32)
    assert converted.dtype == torch.float32 and converted[0, 2, 3, 4] == _ramp()[4, 3, 2]


def test_reorient_to_ras_moves_no_voxel_in_world_space():
    affine = oblique_affine(angles=(0.1, 0.05, 2.0))
    data = to_ijk_array(Volume(_ramp(), affine))
    out, new_affine, undo = reorient_to_ras(data, affine)
    # every voxel keeps its world position
    for idx in [(0, 0, 0), (3, 4, 5), (10, 8, 6)]:
        value = data[(0, *idx)]
        pos = (affine @ np.array([*idx, 1.0]))[:3]
        new_idx = np.rint(np.linalg.solve(new_affine[:3, :3], pos - new_affine[:3, 3])).astype(int)
        assert out[(0, *new_idx)] == value
    # the new axes point mostly along +R, +A, +S
    assert np.all(np.diag(new_affine[:3, :3]) > 0)
    assert np.array_equal(np.asarray(undo(out)), data)


def test_parent_transform_gives_world_geometry(scene):
    vol = Volume(_ramp(), np.diag([1.0, 1.0, 2.0, 1.0]))
    node = bridge.volume_node_from_volume(scene, vol)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 12.5)
    m.SetElement(1, 1, 0.0); m.SetElement(1, 2, -1.0); m.SetElement(2, 1, 1.0); m.SetElement(2, 2, 0.0)
    transform.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = bridge.volume_from_node(node).ijk_to_ras
    expected = slicer.util.arrayFromVTKMatrix(m) @ vol.ijk_to_ras
    assert np.allclose(world, expected)


def test_non_linear_parent_transform_is_refused(scene):
    node = bridge.volume_node_from_volume(scene, Volume(_ramp(), np.eye(4)))
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    grid_transform = slicer.vtkOrientedGridTransform()
    field = slicer.vtkImageData() if hasattr(slicer, "vtkImageData") else vtk.vtkImageData()
    field.SetDimensions(2, 2, 2)
    field.AllocateScalars(vtk.VTK_DOUBLE, 3)
    grid_transform.SetDisplacementGridData(field)
    grid.SetAndObserveTransformFromParent(grid_transform)
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(GeometryError, match="non-linear transform"):
        bridge.volume_from_node(node)


def test_vector_and_single_slice_volumes(scene):
    rgb = np.random.default_rng(0).integers(0, 255, (1, 5, 6, 3)).astype(np.uint8)
    vec = bridge.volume_node_from_volume(scene, Volume(rgb, np.eye(4), name="rgb"))
    back = bridge.volume_from_node(vec)
    assert back.num_components == 3 and back.shape_ijk == (6, 5, 1)
    assert np.array_equal(back.array, rgb)
    assert to_ijk_array(back).shape == (3, 6, 5, 1)


def test_empty_and_degenerate_inputs_are_refused(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(GeometryError, match="no voxels"):
        bridge.volume_from_node(node)
    with pytest.raises(GeometryError, match="singular"):
        Volume(_ramp(), np.diag([1.0, 0.0, 1.0, 1.0]))
