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

from .checks import check_file
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
    set_sitk_geometry(image, volume.ijk_to_ras)
    return image


def set_sitk_geometry(image: sitk.Image, ijk_to_ras: np.ndarray) -> sitk.Image:
    """Give a 3D SimpleITK image the grid of an IJK-to-RAS matrix (spacing, direction and origin in LPS)."""
    ijk_to_lps = LPS_TO_RAS @ ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (ijk_to_lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(o) for o in ijk_to_lps[:3, 3]])
    return image


def _is_dicom(path: Path) -> bool:
    from .dicom.series import is_dicom_file

    return path.is_dir() or is_dicom_file(path)


def read_image(path: str | os.PathLike, series: str | None = None) -> Volume:
    """Read NRRD, NIfTI, MetaImage, a 2D image file, a DICOM file (multi-frame, SEG) or a folder of DICOM series.

    ``series``: the SeriesInstanceUID to read from a folder holding several (see :mod:`medai.dicom.series`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input image not found: {path}")
    name = path.name
    from .radiograph import is_projection_dicom, is_radiograph, read_radiograph

    if _is_dicom(path) and not (path.is_file() and is_projection_dicom(path)):
        from .dicom.series import read_dicom

        return read_dicom(path, series)
    else:
        if is_radiograph(path):  # PNG, JPEG, a projection DICOM file: photometric interpretation and pixel spacing honoured
            check_file(path)  # a cut-off picture is an error, not a half-black image
            return read_radiograph(path)
        for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        check_file(path)  # truncated data, NaN/Inf a reader turns into 0, pixdim 0
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
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        check_written_grid(tmp, volume, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)  # never leave a half-written file under the user's name
    return path


ORTHOGONAL_ONLY = (".nii", ".nii.gz")  # NIfTI readers make a non-orthogonal direction matrix orthogonal


def check_format_holds_grid(volume: Volume, target: str | os.PathLike) -> None:
    """Before any work: refuse an output format that cannot hold ``volume``'s grid (see :func:`check_written_grid`)."""
    if suffix_of(target) in ORTHOGONAL_ONLY:
        d = volume.direction
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise GeometryError(_grid_message(volume, Path(target)))


def _grid_message(volume: Volume, target: Path) -> str:
    return (f"output {target}: the {suffix_of(target)} format cannot hold the grid of {volume.name} exactly "
            "(its direction matrix is not orthogonal, e.g. a sheared acquisition) and would be written on another grid; "
            "write .nrrd, .seg.nrrd or .mha instead")


def check_written_grid(written: Path, volume: Volume, target: Path, atol: float = 1e-3) -> None:
    """Refuse a file whose format changed the grid (e.g. NIfTI makes a sheared direction matrix orthogonal)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(written))
    reader.ReadImageInformation()
    dim = reader.GetDimension()
    if dim < 3:
        return
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    got = np.eye(4)
    got[:3, :3] = direction * np.asarray(reader.GetSpacing()[:3])
    got[:3, 3] = reader.GetOrigin()[:3]
    got = LPS_TO_RAS @ got
    want = volume.ijk_to_ras
    axes_ok = np.allclose(got[:3, :3], want[:3, :3], atol=atol * 0.1 * float(volume.spacing.max()))
    origin_ok = np.allclose(got[:3, 3], want[:3, 3], atol=atol * max(1.0, float(np.abs(want[:3, 3]).max()) * 1e-3))
    if not (axes_ok and origin_ok):
        raise GeometryError(_grid_message(volume, target))
