"""Localisation of findings: hot spots of a heatmap and connected components of a region, in RAS millimetres."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Finding:
    """One located finding: where (RAS mm), how big (mL) and how strongly the heatmap points at it."""

    case: str
    kind: str  # "hot spot" or "region"
    name: str
    position_ras: tuple[float, float, float]
    size_ml: float
    peak_score: float
    voxels: int


def _to_ras(ijk_to_ras: np.ndarray, kji: np.ndarray) -> tuple[float, float, float]:
    ijk = np.array([kji[2], kji[1], kji[0], 1.0])
    ras = ijk_to_ras @ ijk
    return (float(ras[0]), float(ras[1]), float(ras[2]))


def _structure(ndim: int) -> np.ndarray:
    return np.ones((3,) * ndim, dtype=bool)


def hot_spots(heat: np.ndarray, ijk_to_ras: np.ndarray, case: str, threshold: float = 0.5, max_spots: int = 5) -> list[Finding]:
    """Connected regions where ``heat`` ([k, j, i], in [0, 1]) is at least ``threshold`` of its peak, strongest first."""
    peak = float(heat.max(initial=0.0))
    if peak <= 0:
        return []
    labels, count = ndimage.label(heat >= threshold * peak, structure=_structure(heat.ndim))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    peaks = ndimage.maximum(heat, labels, index)
    sizes = ndimage.sum_labels(np.ones_like(heat, dtype=np.float32), labels, index)
    centres = ndimage.center_of_mass(heat, labels, index)
    voxel_ml = abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000.0
    order = np.argsort(-np.asarray(peaks))[:max_spots]
    return [Finding(case, "hot spot", f"hot spot {n + 1}", _to_ras(ijk_to_ras, np.asarray(centres[i])),
                    float(sizes[i]) * voxel_ml, float(peaks[i]), int(sizes[i])) for n, i in enumerate(order)]


def region_components(mask: np.ndarray, heat: np.ndarray | None, ijk_to_ras: np.ndarray, case: str, name: str = "region",
                      max_components: int = 50) -> list[Finding]:
    """Each connected component of ``mask`` ([k, j, i]) with its centre, size and peak heat (0 without a heatmap)."""
    labels, count = ndimage.label(mask > 0, structure=_structure(mask.ndim))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones(mask.shape, dtype=np.float32), labels, index)
    centres = ndimage.center_of_mass(np.ones(mask.shape, dtype=np.float32), labels, index)
    peaks = ndimage.maximum(heat, labels, index) if heat is not None else np.zeros(count)
    voxel_ml = abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000.0
    order = np.argsort(-np.asarray(sizes))[:max_components]
    return [Finding(case, "region", f"{name} {n + 1}", _to_ras(ijk_to_ras, np.asarray(centres[i])),
                    float(sizes[i]) * voxel_ml, float(peaks[i]), int(sizes[i])) for n, i in enumerate(order)]
