"""Training data: find cases in a folder, CSV or scene, and preprocess them as the card's inference does.

Sources:

* a Medical Segmentation Decathlon folder: ``dataset.json`` with ``training`` (image/label) entries,
  optionally ``validation`` and ``test`` lists with labels (used as the given split);
* a folder of image/label pairs: ``images/`` + ``labels/`` with the same file names, or
  ``NAME.nii.gz`` beside ``NAME_label.nii.gz`` (also ``_seg``, ``_mask``);
* a CSV with an ``image`` column (paths relative to the CSV) and a ``label`` column (class name,
  several names separated by ``;`` for multi-label, or a number for regression), optionally
  ``split`` (train / validation / test); single-slice images (PNG, 2D NRRD) suit 2D models;
* ``medmnist:FLAG[_SIZE]``: a MedMNIST set (:mod:`medai.training.medmnist`), fetched and cached, official split;
* Slicer scene cases (``medai.slicer.training_source``) that carry volumes in memory.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.intensity import apply_intensity
from ..engine.segment import stack_inputs
from ..geometry import Volume, reorient_to_ras, same_grid, to_ijk_array
from ..io import IMAGE_SUFFIXES, read_image, suffix_of
from ..resample import grid_with_spacing, resample_channels, resample_volume_to

log = logging.getLogger(__name__)

LABEL_TAGS = ("_label", "_labels", "_seg", "_mask")
SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and what to change."""


@dataclass
class Case:
    """One training case: input image(s) (one per channel) and its segmentation or target."""

    id: str
    images: list[Path] = field(default_factory=list)
    label: Path | None = None
    target: float | list[float] | None = None  # class index, multi-label 0/1 vector, or regression value
    split: str | None = None  # split given by the dataset, if any
    volumes: list[Volume] | None = None  # in-memory inputs (scene source)
    label_volume: Volume | None = None

    def load_volumes(self) -> list[Volume]:
        return list(self.volumes) if self.volumes is not None else [read_image(p) for p in self.images]

    def load_label(self) -> Volume | None:
        if self.label_volume is not None:
            return self.label_volume
        return read_image(self.label) if self.label is not None else None


@dataclass
class TrainingData:
    """Cases plus what the task needs to know: label names (segmentation) or class names."""

    cases: list[Case]
    task: str
    labels: dict[int, str] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    description: dict = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)

    def by_id(self) -> dict[str, Case]:
        return {c.id: c for c in self.cases}


def _stem(path: Path) -> str:
    name = path.name
    suffix = suffix_of(path)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else path.stem


def _is_image(path: Path) -> bool:
    return path.is_file() and suffix_of(path) in IMAGE_SUFFIXES


def _labels_present(cases: list[Case], limit: int = 5) -> dict[int, str]:
    values: set[int] = set()
    for case in cases[:limit]:
        lab = case.load_label()
        if lab is not None:
            values |= {int(v) for v in np.unique(lab.array) if v > 0}
    return {v: f"label {v}" for v in sorted(values)}


def from_decathlon(folder: Path) -> TrainingData:
    """Cases from a Decathlon ``dataset.json`` (``training`` plus optional labelled ``validation``/``test``)."""
    meta_path = folder / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc})") from exc
    cases = []
    for split_key, split in (("training", None), ("validation", "validation"), ("test", "test")):
        for n, entry in enumerate(meta.get(split_key) or []):
            if not isinstance(entry, dict) or "label" not in entry:
                continue  # Decathlon's own test list holds images without labels
            images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
            paths = [(folder / p).resolve() for p in images]
            cid = _stem(paths[0])
            cases.append(Case(cid, paths, (folder / entry["label"]).resolve(), split=split))
    if not cases:
        raise DataError(f"{meta_path}: no 'training' entries with image and label")
    if any(c.split for c in cases):
        for c in cases:
            c.split = c.split or "train"
    labels = {int(k): str(v) for k, v in (meta.get("labels") or {}).items() if int(k) > 0} or _labels_present(cases)
    modalities = [str(v) for v in (meta.get("modality") or {}).values()] or ["image"]
    desc = {"source": "decathlon", "path": str(folder), "name": meta.get("name", folder.name),
            "description": meta.get("description", ""), "reference": meta.get("reference", ""),
            "licence": meta.get("licence", meta.get("license", "")), "cases": len(cases)}
    return TrainingData(cases, "segmentation", labels, description=desc, modalities=modalities)


def from_pairs(folder: Path) -> TrainingData:
    """Cases from ``images/`` + ``labels/`` (same names) or ``NAME`` + ``NAME_label`` files side by side."""
    cases: list[Case] = []
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        labels = {_stem(p): p for p in (folder / "labels").iterdir() if _is_image(p)}
        for img in sorted(p for p in (folder / "images").iterdir() if _is_image(p)):
            stem = _stem(img)
            if stem in labels:
                cases.append(Case(stem, [img.resolve()], labels[stem].resolve()))
            else:
                log.warning("%s has no label in %s; skipped", img.name, folder / "labels")
    else:
        files = {_stem(p): p for p in folder.iterdir() if _is_image(p)}
        for stem, img in sorted(files.items()):
            if any(stem.endswith(t) for t in LABEL_TAGS):
                continue
            label = next((files[stem + t] for t in LABEL_TAGS if stem + t in files), None)
            if label is not None:
                cases.append(Case(stem, [img.resolve()], label.resolve()))
    if not cases:
        raise DataError(
            f"{folder}: no image/label pairs found; use images/ + labels/ with matching names, "
            "NAME.nii.gz beside NAME_label.nii.gz, or a Decathlon dataset.json"
        )
    desc = {"source": "pairs", "path": str(folder), "name": folder.name, "cases": len(cases)}
    return TrainingData(cases, "segmentation", _labels_present(cases), description=desc, modalities=["image"])


def _label_names(text: str) -> set[str]:
    """Multi-label class names in one CSV cell: ``"a;b"`` (empty: none of the classes)."""
    return {n.strip() for n in (text or "").split(";") if n.strip()}


def from_csv(path: Path, task: str = "classification") -> TrainingData:
    """Cases from a CSV with ``image`` and ``label`` columns (optional ``split``); paths relative to the CSV."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{path}: the CSV has no rows")
    cols = {c.lower(): c for c in rows[0]}
    image_col = cols.get("image") or cols.get("path") or cols.get("file")
    label_col = cols.get("label") or cols.get("class") or cols.get("target") or cols.get("value")
    if image_col is None or label_col is None:
        raise DataError(f"{path}: needs an 'image' column and a 'label' (or 'class', 'target') column; found {', '.join(rows[0])}")
    split_col = cols.get("split")
    id_col = cols.get("id") or cols.get("case")
    classes: list[str] = []
    if task == "classification":
        classes = sorted({r[label_col].strip() for r in rows})
    elif task == "multilabel":
        classes = sorted({n for r in rows for n in _label_names(r[label_col])})
        if not classes:
            raise DataError(f"{path}: no class names in column {label_col!r}; list each image's classes separated by ';'")
    cases = []
    for n, r in enumerate(rows):
        img = Path(r[image_col])
        img = (path.parent / img).resolve() if not img.is_absolute() else img
        if task == "classification":
            target = float(classes.index(r[label_col].strip()))
        elif task == "multilabel":
            names = _label_names(r[label_col])
            target = [1.0 if c in names else 0.0 for c in classes]
        else:
            try:
                target = float(r[label_col])
            except ValueError as exc:
                raise DataError(f"{path}, row {n + 2}: regression target {r[label_col]!r} is not a number") from exc
        split = (r.get(split_col) or "").strip().lower() if split_col else None
        if split == "val":
            split = "validation"
        if split and split not in SPLITS:
            raise DataError(f"{path}, row {n + 2}: split {split!r} unknown; use train, validation or test")
        cases.append(Case(r[id_col] if id_col else _stem(img), [img], target=target, split=split or None))
    missing = [c.images[0] for c in cases if not c.images[0].exists()]
    if missing:
        raise DataError(f"{path}: {len(missing)} image(s) not found, e.g. {missing[0]}; paths are relative to the CSV's folder")
    desc = {"source": "csv", "path": str(path), "name": path.stem, "cases": len(cases)}
    return TrainingData(cases, task, classes=classes, description=desc, modalities=["image"])


def discover(path: str | os.PathLike, task: str) -> TrainingData:
    """The right source for ``path``: ``medmnist:FLAG``, a ``.csv`` file, a Decathlon folder, or a folder of pairs."""
    if str(path).lower().startswith("medmnist:"):
        from . import medmnist

        data = medmnist.load(str(path))
        if task != data.task:
            raise DataError(f"{path} is a {data.task} set; use --task {data.task}")
        return data
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"training data {path} not found")
    if path.is_file() and path.suffix.lower() == ".csv":
        if task == "segmentation":
            raise DataError(f"{path}: a CSV gives classification or regression targets; use --task classification or regression")
        return from_csv(path, task)
    if path.is_dir():
        if task != "segmentation":
            csvs = sorted(path.glob("*.csv"))
            if len(csvs) == 1:
                return from_csv(csvs[0], task)
            raise DataError(f"{path}: {task} needs a CSV of image paths and labels; give the .csv file")
        if (path / "dataset.json").exists():
            return from_decathlon(path)
        return from_pairs(path)
    raise DataError(f"{path}: give a folder (Decathlon or image/label pairs) or a .csv file")


# --- preprocessing shared with inference ---------------------------------------------------------


@dataclass
class Preprocessing:
    """What the card's ``preprocessing``/``inference`` say, applied identically in training and inference."""

    orientation: str | None = "RAS"
    spacing: list[float] | None = None
    intensity: list[dict] = field(default_factory=list)
    resize: list[int] | None = None  # classification: inputs resized to the card's roi_size
    crop_foreground: bool = False  # training only: crop cases to the labelled/nonzero region plus a margin

    def to_card(self) -> dict:
        return {"orientation": self.orientation, "spacing": self.spacing, "intensity": self.intensity}


def _foreground_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    if not idx[0].size:
        return tuple(slice(0, n) for n in mask.shape)
    return tuple(slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + 1 + margin)) for i, n in zip(idx, mask.shape))


def preprocess(volumes: list[Volume], prep: Preprocessing, label: Volume | None = None,
               channels: int | None = None, name: str = "case") -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
    """Inputs as the network sees them: ``(C, I, J, K)`` float32, label ``(1, I, J, K)`` (or None), and its affine.

    Same steps, same code as :func:`medai.engine.segment.segment_with_card`: stack channels on the
    first volume's grid, reorient to RAS, resample to the card's spacing, then intensity ops (or
    for classification: resize to ``roi_size`` and then intensity ops). A 2D model (two ``resize``
    values) gets the single slice as stored, ``(C, A, B)``, unreoriented, as the classify engine does.
    """
    ref = volumes[0]
    x = stack_inputs(volumes, channels or sum(v.num_components for v in volumes), name)
    y = None
    if label is not None:
        if not same_grid(label, ref):
            log.info("%s: resampling the label onto the image grid (nearest neighbour)", name)
            label = resample_volume_to(label, ref, linear=False)
        y = torch.from_numpy(np.ascontiguousarray(to_ijk_array(label)).astype(np.int64))
    if prep.resize is not None and len(prep.resize) == 2:  # a 2D model: the single slice, in its own orientation
        x = ref_slice(x, name)
        x = F.interpolate(x[None], size=tuple(prep.resize), mode="bilinear")[0]
        return apply_intensity(x.contiguous(), prep.intensity, {}).float(), None, ref.ijk_to_ras
    affine = ref.ijk_to_ras
    if prep.orientation == "RAS":
        x, affine, _ = reorient_to_ras(x, ref.ijk_to_ras)
        if y is not None:
            y, _, _ = reorient_to_ras(y, ref.ijk_to_ras)
    x = x.contiguous()
    if prep.resize is not None:
        x = F.interpolate(x[None], size=tuple(prep.resize), mode="trilinear" if len(prep.resize) == 3 else "bilinear")[0]
    elif prep.spacing:
        shape, new_affine = grid_with_spacing(tuple(x.shape[1:]), affine, prep.spacing)
        x = torch.from_numpy(resample_channels(x.numpy(), affine, shape, new_affine, linear=True))
        if y is not None:
            y = torch.from_numpy(resample_channels(y.numpy().astype(np.int16), affine, shape, new_affine, linear=False).astype(np.int64))
        affine = new_affine
    if prep.crop_foreground:
        mask = (y[0] > 0).numpy() if y is not None else (x.abs().sum(0) > 0).numpy()
        box = _foreground_box(mask, margin=8)
        x = x[(slice(None), *box)].contiguous()
        y = y[(slice(None), *box)].contiguous() if y is not None else None
    x = apply_intensity(x, prep.intensity, {})
    return x.float(), y, affine


def ref_slice(x: torch.Tensor, name: str) -> torch.Tensor:
    """``(C, I, J, K)`` with one single-voxel axis (K preferred, as the classify engine picks) -> ``(C, A, B)``."""
    for axis in (2, 1, 0):
        if x.shape[axis + 1] == 1:
            return x.select(axis + 1, 0)
    raise DataError(f"{name}: a 2D model (two --roi values) needs single-slice images, but this one is {tuple(x.shape[1:])}; "
                    "give 2D images (PNG, single-slice NRRD) or three --roi values for a 3D model")


def estimate_case_bytes(case: Case, prep: Preprocessing) -> int:
    """Memory a preprocessed case takes (from the file headers, without reading voxels)."""
    import SimpleITK as sitk

    if prep.resize is not None:
        return int(np.prod(prep.resize)) * 4 * max(1, len(case.images or case.volumes or [1]))
    if case.volumes is not None:
        n = case.volumes[0].array.size
        spacing = case.volumes[0].spacing
    else:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(case.images[0]))
        reader.ReadImageInformation()
        n = int(np.prod(reader.GetSize()))
        spacing = np.array(reader.GetSpacing())
    if prep.spacing:
        n = int(n * np.prod(spacing[:3] / np.asarray(prep.spacing)))
    return n * 4 * (max(1, len(case.images or case.volumes or [1])) + 2)
