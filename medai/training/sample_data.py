"""Training sets derived from the MNI152 sample (T1 + grey/white-matter probability maps), for the
shipped default models, the tests and the benchmark.

The labels are **derived**, not manual: grey matter (1) where the GM probability is >= 0.5 and at
least the WM probability, white matter (2) where the WM probability is >= 0.5 and above GM. Cases
are non-overlapping axial slabs of the one template, so validation and test slabs never share a
voxel with training slabs; they do share the subject (the template), which a card must say.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..geometry import Volume, crop_affine
from ..io import read_image, write_volume

TISSUE_LABELS = {1: "grey matter", 2: "white matter"}
TISSUE_CLASSES = ["other", "grey matter", "white matter"]  # "other": CSF or outside the brain
LABEL_NOTE = ("Labels derived by thresholding the MNI152 2009a GM/WM probability maps at 0.5 (argmax of GM vs WM); "
              "not manual segmentations. All cases come from one template brain (non-overlapping axial slabs).")


def tissue_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """0 other, 1 grey matter, 2 white matter, from maps scaled 0..255 (uint8) or 0..1."""
    scale = 255.0 if max(gm.max(), wm.max()) > 1.0 else 1.0
    g, w = gm.astype(np.float32) / scale, wm.astype(np.float32) / scale
    out = np.zeros(gm.shape, dtype=np.uint8)
    out[(g >= 0.5) & (g >= w)] = 1
    out[(w >= 0.5) & (w > g)] = 2
    return out


def _load(mni_files: dict) -> tuple[Volume, np.ndarray]:
    t1 = read_image(mni_files["mni152_t1.nii.gz"])
    gm = read_image(mni_files["mni152_gm.nii.gz"]).array
    wm = read_image(mni_files["mni152_wm.nii.gz"]).array
    return t1, tissue_labels(gm, wm)


def _sub(volume: Volume, array: np.ndarray, box: tuple[slice, slice, slice], name: str) -> Volume:
    """A sub-volume ([k, j, i] box) with its origin moved so it stays in place in the world."""
    starts = [b.indices(n)[0] for b, n in zip(box, array.shape)]  # [k, j, i]
    return Volume(np.ascontiguousarray(array[box]), crop_affine(volume.ijk_to_ras, starts[::-1]), name)


def brain_box(labels: np.ndarray, margin: int = 4) -> tuple[slice, slice, slice]:
    idx = np.nonzero(labels)
    return tuple(slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + 1 + margin)) for i, n in zip(idx, labels.shape))  # type: ignore[return-value]


def make_tissue_slabs(mni_files: dict, out: Path, slab_mm: int = 24, crop: tuple[int, int, int] | None = None,
                      validation: int = 1, test: int = 1) -> Path:
    """A Decathlon-style folder of axial slabs (T1 + derived GM/WM labels); returns its path.

    ``crop`` (k, j, i voxels) keeps only a centred block of the brain, for tiny tests. Slabs are
    assigned to splits in a fixed interleaved pattern from the middle of the brain outwards
    (validation then test), written into ``dataset.json`` as the given split.
    """
    t1, labels = _load(mni_files)
    box = brain_box(labels)
    if crop is not None:
        centre = [(b.start + b.stop) // 2 for b in box]
        box = tuple(slice(max(0, c - n // 2), c - n // 2 + n) for c, n in zip(centre, crop))  # type: ignore[assignment]
    t1_b, lab_b = _sub(t1, t1.array, box, "t1"), _sub(t1, labels, box, "labels")
    out.mkdir(parents=True, exist_ok=True)
    (out / "imagesTr").mkdir(exist_ok=True)
    (out / "labelsTr").mkdir(exist_ok=True)
    n_slabs = max(3, lab_b.array.shape[0] // slab_mm)
    edges = np.linspace(0, lab_b.array.shape[0], n_slabs + 1).astype(int)
    order = sorted(range(n_slabs), key=lambda s: abs(s - (n_slabs - 1) / 2))  # middle slabs first
    val_ids = set(order[:validation])
    test_ids = set(order[validation : validation + test])
    entries: dict[str, list] = {"training": [], "validation": [], "test": []}
    for s in range(n_slabs):
        sl = (slice(int(edges[s]), int(edges[s + 1])), slice(None), slice(None))
        name = f"slab{s:02d}"
        img = _sub(t1_b, t1_b.array, sl, name)
        lab = _sub(lab_b, lab_b.array, sl, name)
        write_volume(img, out / "imagesTr" / f"{name}.nii.gz")
        write_volume(lab, out / "labelsTr" / f"{name}.nii.gz")
        key = "validation" if s in val_ids else "test" if s in test_ids else "training"
        entries[key].append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    meta = {
        "name": "MNI152 tissue slabs (derived labels)",
        "description": LABEL_NOTE + f" {n_slabs} axial slabs of {lab_b.array.shape[0] / n_slabs:.0f} mm inside the brain box.",
        "reference": "ICBM 2009a nonlinear symmetric template (Fonov et al. 2011) as shipped in nilearn 0.14.1",
        "licence": "ICBM/MNI template licence (free use with attribution)",
        "modality": {"0": "T1"},
        "labels": {"0": "background", **{str(k): v for k, v in TISSUE_LABELS.items()}},
        **entries,
        "numTraining": len(entries["training"]),
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return out


def make_tissue_patches(mni_files: dict, out: Path, patch: int = 16, per_class: int = 200, slab_mm: int = 24, seed: int = 0) -> Path:
    """A CSV (``patches.csv``) of 3D T1 patches classified by the derived tissue at their centre voxel.

    Patch centres are drawn per class; each patch lies wholly inside one axial slab, and slabs are
    assigned to train / validation / test as in :func:`make_tissue_slabs` (the ``split`` column).
    """
    t1, labels = _load(mni_files)
    box = brain_box(labels)
    t1_b, lab_b = t1.array[box], labels[box]
    rng = np.random.default_rng(seed)
    n_slabs = max(3, lab_b.shape[0] // slab_mm)
    edges = np.linspace(0, lab_b.shape[0], n_slabs + 1).astype(int)
    order = sorted(range(n_slabs), key=lambda s: abs(s - (n_slabs - 1) / 2))
    split_of = {s: "validation" if s == order[0] else "test" if s == order[1] else "train" for s in range(n_slabs)}
    half = patch // 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "patches").mkdir(exist_ok=True)
    head = np.zeros(lab_b.shape, bool)
    head[t1_b > 0] = True  # "other" patches come from inside the head image, not empty air
    rows = []
    for s in range(n_slabs):
        k0, k1 = int(edges[s]) + half, int(edges[s + 1]) - half
        if k1 <= k0:
            continue
        region = np.zeros(lab_b.shape, bool)
        region[k0:k1, half:-half, half:-half] = True
        n_here = max(4, int(per_class * (k1 - k0) / lab_b.shape[0]))
        for cls, name in enumerate(TISSUE_CLASSES):
            cand = np.argwhere(region & (lab_b == cls) & head)
            if not len(cand):
                continue
            for n, (k, j, i) in enumerate(cand[rng.choice(len(cand), size=min(n_here, len(cand)), replace=False)]):
                sub_box = (slice(k - half, k + half), slice(j - half, j + half), slice(i - half, i + half))
                abs_box = tuple(slice(b.start + s_.start, b.stop + s_.start) for b, s_ in zip(sub_box, box))
                vol = _sub(t1, t1.array, abs_box, "p")
                fname = f"patches/s{s:02d}_{cls}_{n:03d}.nii.gz"
                write_volume(vol, out / fname)
                rows.append({"image": fname, "label": name, "split": split_of[s]})
    with open(out / "patches.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "README.txt").write_text(
        f"{len(rows)} T1 patches of {patch}^3 mm classified by derived tissue at the centre voxel ({', '.join(TISSUE_CLASSES)}).\n"
        + LABEL_NOTE + "\n")
    return out / "patches.csv"
