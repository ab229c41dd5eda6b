"""The cases of a cohort: one per image file, DICOM series folder, folder of channel images, or CSV row."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
SEGMENT_FORMATS = (".seg.nrrd", ".nii.gz", ".nrrd", ".mha")


@dataclass(frozen=True)
class Case:
    """One case: a name (its output's name) and its image paths (the channels, first defines the grid)."""

    name: str
    images: tuple[str, ...]


def image_suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), None)


def _is_dicom_folder(folder: Path) -> bool:
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # no ITK warning for a folder that is not DICOM
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def cases_from_folder(folder: Path) -> list[Case]:
    """One case per image file, per DICOM series sub-folder, or per sub-folder of channel images."""
    cases = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            channels = [str(p) for p in sorted(entry.iterdir()) if p.is_file() and image_suffix(p.name)]
            if channels:
                cases.append(Case(entry.name, tuple(channels)))
            elif _is_dicom_folder(entry):
                cases.append(Case(entry.name, (str(entry),)))
            else:
                log.warning("%s: no image files or DICOM series in this folder; skipped", entry)
        elif suffix := image_suffix(entry.name):
            cases.append(Case(entry.name[: -len(suffix)], (str(entry),)))
    return cases


def cases_from_csv(path: Path) -> list[Case]:
    """Rows ``case,image[,image2...]`` (a header row starting with ``case`` is skipped); paths relative to the CSV."""
    cases = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or cells[0].startswith("#") or (n == 1 and cells[0].lower() == "case"):
                continue
            if len(cells) < 2:
                raise ValueError(f"{path} line {n}: expected case,image[,image2...], got {','.join(row)!r}")
            images = tuple(str(Path(c) if Path(c).is_absolute() else path.parent / c) for c in cells[1:])
            cases.append(Case(cells[0], images))
    return cases


def find_cases(source: str | os.PathLike) -> list[Case]:
    """The cases of a folder or a CSV file; errors name the input and what to change."""
    source = Path(source)
    if source.is_dir():
        cases = cases_from_folder(source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        cases = cases_from_csv(source)
    else:
        raise FileNotFoundError(f"input {source}: give a folder of cases or a CSV file (case,image[,image2...])")
    if not cases:
        raise ValueError(f"input {source}: no cases found (image files {', '.join(IMAGE_SUFFIXES)}, DICOM series folders or folders of channels)")
    seen: dict[str, Case] = {}
    for case in cases:
        if not case.name or "/" in case.name or "\\" in case.name or case.name.startswith("."):
            raise ValueError(f"input {source}: case name {case.name!r} cannot be a file name; rename it")
        if case.name in seen:
            raise ValueError(f"input {source}: two cases are named {case.name!r} ({seen[case.name].images[0]} and {case.images[0]}); rename one")
        seen[case.name] = case
    return cases


def output_name(case: Case | str, task: str, fmt: str = ".seg.nrrd") -> str:
    name = case.name if isinstance(case, Case) else case
    return f"{name}{fmt}" if task == "segment" else f"{name}.scores.csv"
