"""Resampling between grids with SimpleITK (measured several times faster than MONAI's Spacing on CPU)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .geometry import Volume, to_ijk_array
from .io import set_sitk_geometry


def _image(channels_ijk: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """SimpleITK image from a ``(C, I, J, K)`` array with an IJK-to-RAS affine."""
    arr = np.ascontiguousarray(np.moveaxis(channels_ijk, 0, -1).transpose(2, 1, 0, 3))  # -> [k, j, i, c]
    return set_sitk_geometry(sitk.GetImageFromArray(arr, isVector=True), affine)


def resample_channels(
    channels_ijk: np.ndarray, src_affine: np.ndarray, dst_shape: tuple[int, int, int], dst_affine: np.ndarray,
    linear: bool = True, default: float = 0.0,
) -> np.ndarray:
    """Resample a ``(C, I, J, K)`` array from one world grid onto another; returns ``(C, I', J', K')``."""
    src = _image(channels_ijk, src_affine)
    ref = _image(np.zeros((1, *dst_shape), dtype=np.uint8), dst_affine)
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, default, src.GetPixelID())
    arr = sitk.GetArrayFromImage(out)  # [k, j, i, c]
    if arr.ndim == 3:
        arr = arr[..., None]
    return np.ascontiguousarray(arr.transpose(3, 2, 1, 0))


def grid_with_spacing(shape: tuple[int, ...], affine: np.ndarray, spacing: list[float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid with the same orientation and extent as (shape, affine) but voxel size ``spacing``."""
    old = np.linalg.norm(affine[:3, :3], axis=0)
    new = np.asarray(spacing, dtype=np.float64)
    new_shape = tuple(max(1, int(round(n * o / s))) for n, o, s in zip(shape, old, new))
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] / old * new
    # keep the field of view centred: corner of the first voxel stays where it was
    out[:3, 3] = affine[:3, 3] + (affine[:3, :3] / old) @ ((new - old) / 2.0)
    return new_shape, out


def resample_volume_to(volume: Volume, reference: Volume, linear: bool = True) -> Volume:
    """``volume`` resampled onto ``reference``'s grid (for multi-modal inputs)."""
    ref_shape = reference.shape_ijk
    src = to_ijk_array(volume)
    out = resample_channels(src.astype(np.float32), volume.ijk_to_ras, ref_shape, reference.ijk_to_ras, linear)
    arr = out[0].transpose(2, 1, 0) if out.shape[0] == 1 else out.transpose(3, 2, 1, 0)
    return Volume(np.ascontiguousarray(arr), reference.ijk_to_ras.copy(), name=volume.name, metadata=dict(volume.metadata))
