"""Volumes and their geometry: one array, one IJK-to-RAS matrix, and nothing else.

Conventions used everywhere in MedAI:

* ``Volume.array`` is indexed ``[k, j, i]`` (``[k, j, i, c]`` for vector volumes), exactly as
  ``slicer.util.arrayFromVolume`` and ``SimpleITK.GetArrayViewFromImage`` return it.
* ``Volume.ijk_to_ras`` maps the voxel index ``(i, j, k, 1)`` to world RAS millimetres.
* Tensors handed to MONAI are channel-first ``(C, I, J, K)`` ``MetaTensor`` objects whose
  ``affine`` is ``ijk_to_ras`` (MONAI's own RAS convention), made as strided views of the
  volume's buffer: no voxel is copied unless a dtype conversion needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class GeometryError(ValueError):
    """An input volume whose geometry MedAI cannot use; the message says which and why."""


@dataclass
class Volume:
    """A scalar or vector image on a regular grid in world (RAS) space."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = "volume"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.ijk_to_ras.shape != (4, 4):
            raise GeometryError(f"{self.name}: IJK-to-RAS must be a 4x4 matrix, got {self.ijk_to_ras.shape}")
        if self.array.ndim not in (3, 4):
            raise GeometryError(
                f"{self.name}: expected a 3D array [k, j, i] or a vector volume [k, j, i, c], got shape {self.array.shape}"
            )
        if abs(np.linalg.det(self.ijk_to_ras[:3, :3])) < 1e-12:
            raise GeometryError(f"{self.name}: IJK-to-RAS matrix is singular (zero spacing or collapsed axes)")

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape[:3]
        return (i, j, k)

    @property
    def num_components(self) -> int:
        return 1 if self.array.ndim == 3 else int(self.array.shape[3])

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """Unit column vectors of the I, J, K axes in RAS."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3])) / 1000.0)

    def with_array(self, array: np.ndarray, name: str | None = None) -> "Volume":
        """A volume on the same grid holding ``array`` (same ``[k, j, i]`` shape)."""
        if array.shape[:3] != self.array.shape[:3]:
            raise GeometryError(f"array shape {array.shape} does not match grid {self.array.shape[:3]} of {self.name}")
        return Volume(array, self.ijk_to_ras.copy(), name or self.name, dict(self.metadata))


def same_grid(a: Volume, b: Volume, atol: float = 1e-4) -> bool:
    """True when both volumes have identical dimensions and (within ``atol`` mm) identical geometry."""
    return a.array.shape[:3] == b.array.shape[:3] and np.allclose(a.ijk_to_ras, b.ijk_to_ras, atol=atol)


def check_voxels(volume: Volume) -> None:
    """Refuse volumes a network cannot use: empty, or holding NaN or infinite values."""
    if volume.array.size == 0 or min(volume.array.shape[:3]) == 0:
        raise GeometryError(f"{volume.name}: the volume is empty (shape {volume.array.shape}); load an image first")
    if np.issubdtype(volume.array.dtype, np.floating) and not np.isfinite(volume.array).all():
        raise GeometryError(
            f"{volume.name}: the volume contains NaN or infinite voxels; fill or mask them before running a model"
        )


def to_ijk_array(volume: Volume) -> np.ndarray:
    """The voxel array as a channel-first ``(C, I, J, K)`` view (no copy)."""
    arr = volume.array
    if arr.ndim == 3:
        return arr.transpose(2, 1, 0)[None]
    return arr.transpose(3, 2, 1, 0)


def to_metatensor(volume: Volume, dtype: torch.dtype | None = None):
    """A MONAI ``MetaTensor`` ``(C, I, J, K)`` sharing memory with ``volume.array``.

    The buffer is copied only when ``dtype`` differs from the array's own type, or when
    the array's type has no torch equivalent (for example uint16).
    """
    import torch
    from monai.data import MetaTensor

    view = to_ijk_array(volume)
    try:
        tensor = torch.from_numpy(view)
    except TypeError:  # dtypes torch cannot wrap, e.g. uint32: convert once
        tensor = torch.from_numpy(view.astype(np.float32))
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    meta = {
        "filename_or_obj": volume.name,
        "original_affine": torch.as_tensor(volume.ijk_to_ras),
        "spatial_shape": np.asarray(volume.shape_ijk),
        "original_channel_dim": 0,
        "space": "RAS",
    }
    return MetaTensor(tensor, affine=torch.as_tensor(volume.ijk_to_ras), meta=meta)


def array_from_ijk(ijk: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ijk_array` for one channel: ``(I, J, K)`` to ``[k, j, i]``."""
    return np.ascontiguousarray(np.asarray(ijk).transpose(2, 1, 0))


def crop_affine(ijk_to_ras: np.ndarray, start_ijk) -> np.ndarray:
    """The IJK-to-RAS matrix of a box cropped from a grid, whose first voxel is ``start_ijk`` (i, j, k) of that grid."""
    out = np.array(ijk_to_ras, dtype=np.float64, copy=True)
    out[:3, 3] = out[:3, :3] @ np.asarray(start_ijk, dtype=np.float64) + out[:3, 3]
    return out


# --- orientation ---------------------------------------------------------------------------


def axis_permutation(ijk_to_ras: np.ndarray) -> tuple[list[int], list[bool]]:
    """For each RAS axis, which voxel axis is closest to it and whether it runs backwards.

    Returns ``(perm, flip)``: ``perm[r]`` is the index axis (0=I, 1=J, 2=K) that points most
    along world axis ``r``; ``flip[r]`` is True when it points along ``-r``. The assignment is
    greedy on the largest cosines, like ``nibabel.io_orientation``, so oblique volumes get
    the closest canonical orientation.
    """
    direction = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    cos = np.abs(direction)  # rows: world axes, cols: index axes
    perm = [-1, -1, -1]
    used_world, used_index = set(), set()
    for flat in np.argsort(-cos, axis=None):
        w, v = divmod(int(flat), 3)
        if w in used_world or v in used_index:
            continue
        perm[w] = v
        used_world.add(w)
        used_index.add(v)
    flip = [bool(direction[w, perm[w]] < 0) for w in range(3)]
    return perm, flip


def reorient_to_ras(data: torch.Tensor | np.ndarray, ijk_to_ras: np.ndarray):
    """Permute and flip a ``(C, I, J, K)`` array so its axes run closest to R, A, S.

    Returns ``(data, affine, undo)`` where ``undo(x)`` maps any ``(C, I', J', K')`` array on the
    reoriented grid back onto the original index order. Only views are made.
    """
    import torch  # here, not at the top: the module panels import this module before PyTorch is installed

    perm, flip = axis_permutation(ijk_to_ras)
    out = data.permute(0, *[p + 1 for p in perm]) if isinstance(data, torch.Tensor) else data.transpose(0, *[p + 1 for p in perm])
    dims = [w + 1 for w in range(3) if flip[w]]
    if dims:
        out = torch.flip(out, dims) if isinstance(out, torch.Tensor) else np.flip(out, dims)
    new_affine = np.eye(4)
    shape = out.shape[1:]
    for w in range(3):
        col = ijk_to_ras[:3, perm[w]]
        new_affine[:3, w] = -col if flip[w] else col
    new_affine[:3, 3] = ijk_to_ras[:3, 3]
    for w in range(3):
        if flip[w]:
            new_affine[:3, 3] += ijk_to_ras[:3, perm[w]] * (shape[w] - 1)
    inverse_perm = [perm.index(v) for v in range(3)]

    def undo(x):
        if dims:
            x = torch.flip(x, dims) if isinstance(x, torch.Tensor) else np.flip(x, dims)
        order = (0, *[p + 1 for p in inverse_perm])
        return x.permute(*order) if isinstance(x, torch.Tensor) else x.transpose(order)

    return out, new_affine, undo
