"""PNG snapshots of a volume with a segmentation overlaid (no GUI needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .geometry import Volume, reorient_to_ras, to_ijk_array
from .results import SegmentationResult


def _window(slice_: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(slice_, [1, 99]) if slice_.size else (0, 1)
    return np.clip((slice_ - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)


def overlay_png(result: SegmentationResult, path: str | Path, fractions=(0.35, 0.5, 0.65), alpha: float = 0.45) -> Path:
    """Axial, coronal and sagittal slices (rows) at ``fractions`` of the extent (columns), radiological-free RAS display."""
    ref: Volume = result.reference
    image, _, _ = reorient_to_ras(to_ijk_array(ref)[:1].astype(np.float32), ref.ijk_to_ras)
    labels, _, _ = reorient_to_ras(np.stack([result.labelmap()]).transpose(0, 3, 2, 1), ref.ijk_to_ras)
    image, labels = np.asarray(image[0]), np.asarray(labels[0])  # (R, A, S)
    colors = np.zeros((int(labels.max(initial=0)) + 1, 3))
    merged = result.merged_labels()
    for lab in merged:
        if lab.value < len(colors):
            colors[lab.value] = lab.color
    rows = []
    for axis in (2, 1, 0):  # axial (S), coronal (A), sagittal (R)
        tiles = []
        for f in fractions:
            idx = int(round(f * (image.shape[axis] - 1)))
            img = np.take(image, idx, axis=axis)
            lab = np.take(labels, idx, axis=axis)
            rgb = np.repeat(_window(img)[..., None], 3, axis=-1).astype(np.float32)
            mask = lab > 0
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * 255 * colors[lab[mask]]
            edge = mask & ~ndimage.binary_erosion(mask)
            rgb[edge] = 255 * colors[lab[edge]]
            tiles.append(np.flipud(rgb.transpose(1, 0, 2)))  # rows = second axis, superior/anterior up
        height = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0).astype(np.uint8)).save(path)
    return path
