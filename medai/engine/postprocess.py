"""Label post-processing: largest connected component, hole filling, bounding boxes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a binary mask (all False stays all False)."""
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities fully enclosed by the mask (3D, like deepbet's fill_voids)."""
    return ndimage.binary_fill_holes(mask)


def bounding_box(mask: np.ndarray, min_fraction: float = 0.0) -> tuple[slice, ...] | None:
    """Index box of a binary mask; along each axis, keep slices whose foreground fraction exceeds ``min_fraction``."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        profile = mask.mean(axis=other) if min_fraction > 0 else mask.any(axis=other)
        idx = np.nonzero(profile > min_fraction)[0]
        if idx.size == 0:
            return None
        box.append(slice(int(idx.min()), int(idx.max()) + 1))
    return tuple(box)


def postprocess_labelmap(labelmap: np.ndarray, values: list[int], largest: bool, holes: bool) -> np.ndarray:
    """Apply largest-component and hole filling to each label value of a labelmap."""
    if not (largest or holes):
        return labelmap
    out = labelmap.copy()
    for value in values:
        mask = labelmap == value
        if not mask.any():
            continue
        box = bounding_box(mask)
        sub = mask[box]
        if largest:
            sub = largest_component(sub)
        if holes:
            sub = fill_holes(sub)
        region = out[box]
        region[(region == value) & ~sub] = 0
        region[sub & (region == 0)] = value
    return out
