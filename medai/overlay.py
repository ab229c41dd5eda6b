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


VIEWS = (  # (name, axis of the RAS array held fixed, markers: left, right, top, bottom of the displayed tile)
    ("axial", 2, ("L", "R", "A", "P")),
    ("coronal", 1, ("L", "R", "S", "I")),
    ("sagittal", 0, ("P", "A", "S", "I")),
)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _tiles(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, axis: int, fractions, alpha: float) -> list[np.ndarray]:
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
    return tiles


def overlay_png(result: SegmentationResult, path: str | Path, fractions=(0.35, 0.5, 0.65), alpha: float = 0.45) -> Path:
    """Axial, coronal and sagittal slices (rows, named on the left) at ``fractions`` of the extent (columns).

    Display is in RAS as Slicer shows it by default: the patient's left on the left (L/R, A/P, S/I
    marked on every tile), anterior or superior up. A legend names each segment's colour. Small
    volumes are enlarged (nearest neighbour) so that the letters stay readable.
    """
    from PIL import ImageDraw

    ref: Volume = result.reference
    image, _, _ = reorient_to_ras(to_ijk_array(ref)[:1].astype(np.float32), ref.ijk_to_ras)
    labels, _, _ = reorient_to_ras(np.stack([result.labelmap()]).transpose(0, 3, 2, 1), ref.ijk_to_ras)
    image, labels = np.asarray(image[0]), np.asarray(labels[0])  # (R, A, S)
    colors = np.zeros((int(labels.max(initial=0)) + 1, 3))
    merged = result.merged_labels()
    for lab in merged:
        if lab.value < len(colors):
            colors[lab.value] = lab.color
    rows = [_tiles(image, labels, colors, axis, fractions, alpha) for _, axis, _ in VIEWS]
    smallest = min(t.shape[0] for r in rows for t in r)
    zoom = max(1, int(np.ceil(120 / max(smallest, 1))))
    rows = [[np.kron(t, np.ones((zoom, zoom, 1), np.float32)) for t in r] for r in rows]
    gap, margin = 4, 70
    heights = [max(t.shape[0] for t in r) for r in rows]
    widths = [sum(t.shape[1] for t in r) + gap * (len(r) - 1) for r in rows]
    shown = [lab for lab in merged if lab.value < len(colors) and (labels == lab.value).any()] or list(merged)
    legend_h = 28 + 20 * ((len(shown) + 3) // 4)
    canvas = np.zeros((sum(heights) + gap * len(rows) + legend_h, margin + max(widths), 3), np.uint8)
    y = 0
    boxes = []
    for (name, _, marks), tiles, h in zip(VIEWS, rows, heights):
        x = margin
        for t in tiles:
            canvas[y : y + t.shape[0], x : x + t.shape[1]] = t.astype(np.uint8)
            boxes.append((name, marks, x, y, t.shape[1], t.shape[0]))
            x += t.shape[1] + gap
        y += h + gap
    out = Image.fromarray(canvas)
    draw = ImageDraw.Draw(out)
    font, small = _font(15), _font(13)
    y = 0
    for (name, _, _), h in zip(VIEWS, heights):
        draw.text((6, y + h // 2 - 8), name, fill=(255, 255, 255), font=font)
        y += h + gap
    for _, (left, right, top, bottom), x, y0, w, h in boxes:
        yellow = (255, 220, 0)
        draw.text((x + 3, y0 + h // 2 - 7), left, fill=yellow, font=small)
        draw.text((x + w - 12, y0 + h // 2 - 7), right, fill=yellow, font=small)
        draw.text((x + w // 2 - 4, y0 + 2), top, fill=yellow, font=small)
        draw.text((x + w // 2 - 4, y0 + h - 16), bottom, fill=yellow, font=small)
    ly = sum(heights) + gap * len(rows) + 6
    draw.text((6, ly), "legend:", fill=(255, 255, 255), font=small)
    for n, lab in enumerate(shown):
        lx, row_y = margin + (n % 4) * 150, ly + 20 * (n // 4)
        color = tuple(int(255 * c) for c in lab.color[:3])
        draw.rectangle((lx, row_y + 2, lx + 14, row_y + 14), fill=color, outline=(255, 255, 255))
        draw.text((lx + 20, row_y), str(lab.name)[:18], fill=(255, 255, 255), font=small)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path
