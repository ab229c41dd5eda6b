"""Reading and writing image files through SimpleITK.

This is the one place where file (LPS) and MedAI (RAS) geometry meet: SimpleITK stores
direction and origin in LPS, :class:`~medai.geometry.Volume` holds RAS.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .geometry import LPS_TO_RAS, GeometryError, Volume

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def suffix_of(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def ijk_to_ras_from_sitk(image: sitk.Image) -> np.ndarray:
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:dim, :dim] = direction * spacing
    ijk_to_lps[:dim, 3] = origin
    return LPS_TO_RAS @ ijk_to_lps


def volume_from_sitk(image: sitk.Image, name: str = "volume") -> Volume:
    """A :class:`Volume` viewing the SimpleITK image's buffer (2D images become one slice)."""
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise GeometryError(
            f"{name}: {image.GetDimension()}D images are not supported; split a 4D series into 3D volumes first"
        )
    array = sitk.GetArrayFromImage(image)
    volume = Volume(array, ijk_to_ras_from_sitk(image), name=name)
    volume.metadata["sitk_image"] = image  # keeps the buffer alive if a view is taken later
    return volume


def sitk_from_volume(volume: Volume, array: np.ndarray | None = None) -> sitk.Image:
    """A SimpleITK image (LPS geometry) holding ``array`` (default: the volume's own) on its grid."""
    array = volume.array if array is None else array
    is_vector = array.ndim == 4
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=is_vector)
    ijk_to_lps = LPS_TO_RAS @ volume.ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (ijk_to_lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(o) for o in ijk_to_lps[:3, 3]])
    return image


def read_image(path: str | os.PathLike) -> Volume:
    """Read NRRD, NIfTI, MetaImage, a 2D image file, or a folder holding one DICOM series."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input image not found: {path}")
    name = path.name
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise GeometryError(f"{path}: no DICOM series found in this folder")
        if len(series) > 1:
            log.warning("%s holds %d DICOM series; reading the first (%s)", path, len(series), series[0])
        files = reader.GetGDCMSeriesFileNames(str(path), series[0])
        reader.SetFileNames(files)
        image = reader.Execute()
    else:
        from .radiograph import is_radiograph, read_radiograph

        if is_radiograph(path):  # PNG, JPEG, single DICOM file: photometric interpretation and pixel spacing honoured
            return read_radiograph(path)
        for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise GeometryError(f"{path}: cannot read this file as an image ({str(exc).strip().splitlines()[-1]})") from exc
    return volume_from_sitk(image, name=name)


def write_volume(volume: Volume, path: str | os.PathLike, array: np.ndarray | None = None, metadata: dict | None = None) -> Path:
    """Write ``array`` (default: the volume's voxels) on ``volume``'s grid; format from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk_from_volume(volume, array)
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, str(value))
    tmp = path.with_name(path.name + ".partial" + suffix_of(path))
    sitk.WriteImage(image, str(tmp), useCompression=True)
    os.replace(tmp, path)  # never leave a half-written file under the user's name
    return path
