"""Reading DICOM image series: pick one of several series, single- or multi-frame, gantry tilt resampled.

The voxels of single-frame series are decoded by SimpleITK (GDCM: every common transfer
syntax, rescale applied); the geometry is computed here from each slice's position and
orientation, so that irregular, tilted or mixed series are caught instead of silently
mis-placed. Enhanced (multi-frame) CT/MR/PET images are read with highdicom.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..geometry import LPS_TO_RAS, Volume
from . import DicomError

log = logging.getLogger(__name__)

# Series that hold no image to segment or classify (results, annotations, plans)
NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "KO", "REG", "DOC", "OT_REPORT"}
TILT_TOLERANCE = 1e-3  # sine of the angle between the slice step and the slice normal above which a series is tilted


@dataclass
class DicomSeries:
    """One series found in a folder: its UID, what it is, its files and their headers (no pixel data)."""

    uid: str
    modality: str
    description: str
    number: str
    files: list[Path] = field(default_factory=list)
    headers: list = field(default_factory=list)  # pydicom Datasets read without pixel data

    @property
    def is_image(self) -> bool:
        return self.modality not in NON_IMAGE_MODALITIES and all("Rows" in h for h in self.headers)

    def describe(self) -> str:
        frames = sum(int(h.get("NumberOfFrames", 1) or 1) for h in self.headers)
        return f"{self.uid} ({self.modality} #{self.number} '{self.description}', {len(self.files)} file(s), {frames} frame(s))"


@dataclass
class DicomSource:
    """What a volume read from DICOM came from: the headers, sorted as the volume's slices (k)."""

    series: DicomSeries
    headers: list  # sorted along k for single-frame series; one dataset for a multi-frame image
    resampled: bool = False  # True when the voxels are no longer on the source images' grid (gantry tilt)

    @property
    def study_uid(self) -> str:
        return str(self.headers[0].StudyInstanceUID)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(h.SOPInstanceUID) for h in self.headers]


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, EOFError):
        return None


def scan_folder(folder: str | os.PathLike, recursive: bool = True) -> dict[str, DicomSeries]:
    """Every DICOM series in ``folder`` (and its sub-folders), by SeriesInstanceUID; other files are skipped."""
    folder = Path(folder)
    found: dict[str, DicomSeries] = {}
    for path in sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file()):
        ds = _read_header(path)
        if ds is None or "SeriesInstanceUID" not in ds:
            continue
        uid = str(ds.SeriesInstanceUID)
        series = found.get(uid)
        if series is None:
            series = found[uid] = DicomSeries(uid, str(ds.get("Modality", "")), str(ds.get("SeriesDescription", "")),
                                              str(ds.get("SeriesNumber", "")))
        series.files.append(path)
        series.headers.append(ds)
    return found


def choose_series(folder: str | os.PathLike, series_uid: str | None = None) -> DicomSeries:
    """The series ``series_uid`` of ``folder``, or its only image series; otherwise an error listing them all."""
    found = scan_folder(folder)
    if not found:
        raise DicomError(f"{folder}: no DICOM files found in this folder")
    ordered = sorted(found.values(), key=lambda s: (int(s.number) if s.number.lstrip("-").isdigit() else 0, s.uid))
    listing = "; ".join(s.describe() for s in ordered)
    if series_uid:
        if series_uid not in found:
            raise DicomError(f"{folder}: no series {series_uid} here; the folder holds: {listing}")
        chosen = found[series_uid]
        if not chosen.is_image:
            raise DicomError(f"{folder}: series {series_uid} is a {chosen.modality}, not an image series; choose one of: {listing}")
        return chosen
    images = [s for s in ordered if s.is_image]
    if not images:
        raise DicomError(f"{folder}: no image series here, only {listing}")
    if len(images) > 1:
        raise DicomError(f"{folder} holds {len(images)} image series; pick one with --series UID: "
                         + "; ".join(s.describe() for s in images))
    return images[0]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _single_frame_geometry(series: DicomSeries) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Slice order, IJK-to-LPS matrix (K column: the real step between slices) and the slice normal."""
    headers = series.headers
    where = f"series {series.uid}"
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        missing = [str(f.name) for f, h in zip(series.files, headers) if key not in h]
        if missing:
            raise DicomError(f"{where}: {key} missing in {', '.join(missing[:3])}; this is not a 3D image series")
    orient = np.array([[float(x) for x in h.ImageOrientationPatient] for h in headers])
    if np.abs(orient - orient[0]).max() > 1e-4:
        raise DicomError(f"{where}: slices have different orientations (a localiser or a multi-stack series); "
                         "split it into stacks with one orientation each")
    if len({(int(h.Rows), int(h.Columns)) for h in headers}) > 1 or len({tuple(map(float, h.PixelSpacing)) for h in headers}) > 1:
        raise DicomError(f"{where}: slices have different sizes or pixel spacings; this is not one 3D volume")
    row_dir, col_dir = _unit(orient[0, :3]), _unit(orient[0, 3:])
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(x) for x in h.ImagePositionPatient] for h in headers])
    order = list(np.argsort(positions @ normal, kind="stable"))
    pos = positions[order]
    spacing_rc = [float(x) for x in headers[0].PixelSpacing]  # row spacing (between rows), column spacing
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0] = row_dir * spacing_rc[1]
    ijk_to_lps[:3, 1] = col_dir * spacing_rc[0]
    ijk_to_lps[:3, 3] = pos[0]
    if len(pos) == 1:
        thickness = float(headers[0].get("SliceThickness") or 1.0)
        ijk_to_lps[:3, 2] = normal * thickness
        return order, ijk_to_lps, normal
    steps = np.diff(pos, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    if lengths.min() < 1e-3:
        raise DicomError(f"{where}: several slices share one position (time points, echoes or b-values in one series); "
                         "MedAI reads 3D volumes: split the series first")
    step = (pos[-1] - pos[0]) / (len(pos) - 1)
    if np.abs(steps - step).max() > max(0.01 * np.linalg.norm(step), 1e-3):
        raise DicomError(f"{where}: slice spacing is irregular ({lengths.min():.3g} to {lengths.max():.3g} mm); "
                         "slices are missing or the series mixes stacks")
    ijk_to_lps[:3, 2] = step
    return order, ijk_to_lps, normal


def _untilt(array: np.ndarray, ijk_to_lps: np.ndarray, normal: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Resample a sheared (gantry-tilted) stack onto an orthogonal grid covering all its voxels (linear)."""
    from scipy import ndimage

    step = ijk_to_lps[:3, 2]
    out = ijk_to_lps.copy()
    out[:3, 2] = normal * float(step @ normal)
    shape = np.array(array.shape[::-1])  # i, j, k
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    in_out = np.linalg.solve(out, (ijk_to_lps @ corners.T)).T[:, :3]  # source corners in the output grid's index space
    low, high = np.floor(in_out.min(axis=0) + 1e-6), np.ceil(in_out.max(axis=0) - 1e-6)
    out[:3, 3] = (out @ np.array([*low, 1.0]))[:3]
    new_shape = (high - low + 1).astype(int)  # i, j, k
    src_from_out = np.linalg.solve(ijk_to_lps, out)  # output ijk -> source ijk
    perm = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)  # ijk <-> kji
    kji = perm @ src_from_out @ perm
    resampled = ndimage.affine_transform(array.astype(np.float32), kji[:3, :3], kji[:3, 3], output_shape=tuple(new_shape[::-1]),
                                         order=1, mode="constant", cval=float(array.min()))
    angle = np.degrees(np.arccos(min(1.0, abs(float(_unit(step) @ normal)))))
    log.warning("%s: gantry tilt of %.2f degrees; resampled onto an orthogonal %dx%dx%d grid (linear interpolation)",
                where, angle, *new_shape)
    return resampled, out


def _read_single_frame(series: DicomSeries, name: str) -> Volume:
    order, ijk_to_lps, normal = _single_frame_geometry(series)
    files = [str(series.files[n]) for n in order]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # its own spacing warnings; the geometry is checked above
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise DicomError(f"series {series.uid}: cannot decode the pixel data ({str(exc).strip().splitlines()[-1]})") from exc
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DicomError(f"series {series.uid}: colour (RGB) images are not supported as 3D volumes")
    array = sitk.GetArrayFromImage(image)
    step = ijk_to_lps[:3, 2]
    tilted = np.linalg.norm(np.cross(_unit(step), normal)) > TILT_TOLERANCE
    if tilted:
        array, ijk_to_lps = _untilt(array, ijk_to_lps, normal, f"series {series.uid}")
    headers = [series.headers[n] for n in order]
    return Volume(array, LPS_TO_RAS @ ijk_to_lps, name=name, metadata={"dicom": DicomSource(series, headers, resampled=bool(tilted))})


def volume_from_highdicom(volume, name: str, metadata: dict | None = None) -> Volume:
    """A MedAI :class:`Volume` from a ``highdicom.Volume`` (axes slice, row, column; LPS affine)."""
    affine = np.asarray(volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]  # (column, row, slice) = (i, j, k)
    return Volume(np.ascontiguousarray(volume.array), LPS_TO_RAS @ affine, name=name, metadata=metadata or {})


def _read_multi_frame(series: DicomSeries, name: str) -> Volume:
    from . import require_highdicom

    hd = require_highdicom()
    path = series.files[0]
    try:
        image = hd.imread(str(path))
        volume = image.get_volume(dtype=np.float32)
    except (ValueError, RuntimeError, AttributeError, KeyError) as exc:
        raise DicomError(f"{path}: cannot read this multi-frame image as one 3D volume ({exc})") from exc
    array = volume.array
    if np.all(np.mod(array, 1) == 0) and array.min() >= -32768 and array.max() < 32768:
        volume = volume.with_array(array.astype(np.int16))
    return volume_from_highdicom(volume, name, {"dicom": DicomSource(series, [image])})


def read_series(folder: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """The chosen image series of ``folder`` as a :class:`Volume`, with its :class:`DicomSource` in ``metadata['dicom']``."""
    series = choose_series(folder, series_uid)
    name = Path(folder).name
    frames = [int(h.get("NumberOfFrames", 1) or 1) for h in series.headers]
    if max(frames) > 1:
        if len(series.files) > 1:
            raise DicomError(f"series {series.uid} has {len(series.files)} multi-frame files; MedAI reads one multi-frame image "
                             f"per series: copy one file into its own folder")
        return _read_multi_frame(series, name)
    return _read_single_frame(series, name)


def dicom_source(volume: Volume) -> DicomSource | None:
    return volume.metadata.get("dicom")


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """A DICOM folder (one series chosen), a multi-frame or single-slice file, or a SEG (as a labelmap)."""
    path = Path(path)
    if path.is_dir():
        return read_series(path, series_uid)
    header = _read_header(path)
    if header is None:
        raise DicomError(f"{path}: not a readable DICOM file")
    if str(header.get("Modality", "")) == "SEG":
        from .seg import read_seg_labelmap

        return read_seg_labelmap(path)
    if "Rows" not in header or str(header.get("Modality", "")) in NON_IMAGE_MODALITIES:
        raise DicomError(f"{path}: a {header.get('Modality', 'non-image')} object holds no image; give an image series or a SEG")
    volume = read_files([path])
    volume.name = path.name.removesuffix(".dcm")
    return volume


def read_files(files: list[Path]) -> Volume:
    """One image series given as its files (for example from Slicer's DICOM database)."""
    found: dict[str, DicomSeries] = {}
    for path in files:
        ds = _read_header(Path(path))
        if ds is None or "SeriesInstanceUID" not in ds:
            raise DicomError(f"{path}: not a readable DICOM file")
        uid = str(ds.SeriesInstanceUID)
        series = found.setdefault(uid, DicomSeries(uid, str(ds.get("Modality", "")), str(ds.get("SeriesDescription", "")),
                                                   str(ds.get("SeriesNumber", ""))))
        series.files.append(Path(path))
        series.headers.append(ds)
    if len(found) != 1:
        raise DicomError(f"the {len(files)} file(s) given hold {len(found)} series; give the files of one series")
    series = next(iter(found.values()))
    if not series.is_image:
        raise DicomError(f"series {series.uid} is a {series.modality}, not an image series")
    name = series.description or series.uid
    if max(int(h.get("NumberOfFrames", 1) or 1) for h in series.headers) > 1:
        return _read_multi_frame(series, name)
    return _read_single_frame(series, name)
