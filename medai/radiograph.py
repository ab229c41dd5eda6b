"""Single radiographs (X-ray images): PNG, JPEG and single-frame DICOM, read the way a reader would look at them.

* DICOM ``PhotometricInterpretation`` is honoured: ``MONOCHROME1`` (the lowest value shown white, as
  many CR/DX systems store it) is inverted within the stored values' own range (``max + min - value``),
  so that bone is bright as in ``MONOCHROME2`` and the values keep their range. The pinned SimpleITK
  (2.5.7, ITK 5.4) GDCM reader already returns the pixel type's maximum minus the stored value; that is
  shifted back into the stored range, and ``Testing/Python/test_radiograph.py`` checks the exact result,
  so a reader that changed its behaviour fails the tests rather than a patient's image. ``RGB``/``YBR``
  become colour (vector) images; ``PALETTE COLOR`` is refused. Rescale slope/intercept are applied by the reader.
* Pixel spacing: ``PixelSpacing`` (0028,0030), else ``ImagerPixelSpacing`` (0018,1164, at the detector,
  not corrected for magnification), else 1 mm with a note in ``volume.metadata["pixel_spacing"]``.
  PNG and JPEG have no spacing: 1 mm per pixel, as for any 2D picture.
* A grey picture saved as RGB (equal channels, as many exported PNG/JPEG radiographs are) becomes
  one grey channel, so a single-channel model takes it; a true colour picture stays a vector image.

The result is a one-slice :class:`~medai.geometry.Volume` on the same grid :func:`medai.io.read_image`
gives any 2D file, so models trained on arrays (e.g. MedMNIST) see PNG and DICOM radiographs alike.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom.series import is_dicom_file
from .geometry import GeometryError, Volume

log = logging.getLogger(__name__)

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
OTHER_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff", ".npz")
PHOTOMETRIC, PIXEL_SPACING, IMAGER_PIXEL_SPACING = "0028|0004", "0028|0030", "0018|1164"


def is_radiograph(path: str | Path) -> bool:
    """Whether :func:`read_radiograph` reads ``path``: a PNG or JPEG file, or a single DICOM file."""
    path = Path(path)
    if not path.is_file():
        return False
    name = path.name.lower()
    if name.endswith(PICTURE_SUFFIXES + DICOM_SUFFIXES):
        return True
    return not name.endswith(OTHER_IMAGE_SUFFIXES) and is_dicom_file(path)


def is_projection_dicom(path: str | Path) -> bool:
    """A single DICOM file holding a projection radiograph (CR, DX, MG...): no slice orientation, one frame.

    Such files are read here (photometric interpretation, pixel spacing); slices and series go to
    :mod:`medai.dicom.series`.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # not readable as DICOM: the series reader gives the error
        return False
    return ("Rows" in ds and "ImageOrientationPatient" not in ds and "SharedFunctionalGroupsSequence" not in ds
            and int(ds.get("NumberOfFrames", 1) or 1) == 1)


def _tag(reader: sitk.ImageFileReader, key: str) -> str | None:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) and reader.GetMetaData(key).strip() else None


def _spacing(reader: sitk.ImageFileReader, path: Path) -> tuple[tuple[float, float] | None, str]:
    """(column, row) spacing in mm and where it came from."""
    for key, what in ((PIXEL_SPACING, "PixelSpacing"), (IMAGER_PIXEL_SPACING, "ImagerPixelSpacing (at the detector)")):
        text = _tag(reader, key)
        if text:
            try:
                row, col = (float(v) for v in text.split("\\")[:2])
            except ValueError:
                log.warning("%s: %s %r is not two numbers; ignored", path, what, text)
                continue
            if row > 0 and col > 0:
                return (col, row), what
    return None, "none in the file: 1 mm per pixel assumed"


def grey_if_equal_channels(array: np.ndarray, tolerance: float = 2.0) -> np.ndarray:
    """``[..., C]`` colour array whose RGB channels agree (within ``tolerance``) -> one grey channel; alpha dropped."""
    if array.ndim < 3 or array.shape[-1] not in (2, 3, 4):
        return array
    colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    ref = colour[..., :1].astype(np.float32)
    if np.abs(colour.astype(np.float32) - ref).max(initial=0) <= tolerance:
        return np.ascontiguousarray(colour[..., 0])
    return np.ascontiguousarray(colour)


def read_radiograph(path: str | Path) -> Volume:
    """A PNG, JPEG or single-frame DICOM radiograph as a one-slice volume (see the module notes)."""
    from .io import volume_from_sitk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input image not found: {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        image = reader.Execute()
    except RuntimeError as exc:
        raise GeometryError(f"{path}: cannot read this file as an image ({str(exc).strip().splitlines()[-1]})") from exc
    stem = path.name  # as medai.io.read_image names 2D files: the CSV of `medai classify` shows the file name
    if image.GetDimension() == 3 and image.GetSize()[2] > 1:
        return volume_from_sitk(image, stem)  # a multi-frame DICOM: a volume, not a radiograph
    photometric = (_tag(reader, PHOTOMETRIC) or "").upper()
    if photometric == "PALETTE COLOR":
        raise GeometryError(f"{path}: PALETTE COLOR DICOM images are not supported; export the radiograph as MONOCHROME2")
    geometry = volume_from_sitk(image, stem).ijk_to_ras  # the file's own origin and direction
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 3:
        array = array[0]  # a one-frame DICOM read as a 3D image of one slice
    array = grey_if_equal_channels(array) if image.GetNumberOfComponentsPerPixel() > 1 else array
    metadata: dict = {"photometric_interpretation": photometric or ("RGB" if array.ndim == 3 else "MONOCHROME2")}
    if photometric == "MONOCHROME1" and array.dtype.kind == "u":
        # the reader gave (type maximum - stored); shift it back so it spans the stored values' own range
        wide = array.astype(np.int64)
        array = (wide + (np.iinfo(array.dtype).max - int(wide.min()) - int(wide.max()))).astype(array.dtype)
        metadata["inverted"] = "MONOCHROME1 shown as MONOCHROME2: inverted within the stored values' range"
    elif photometric == "MONOCHROME1":
        metadata["inverted"] = "MONOCHROME1 shown as MONOCHROME2 by the DICOM reader (ITK/GDCM)"
    if is_dicom_file(path):
        spacing, metadata["pixel_spacing"] = _spacing(reader, path)
        for axis, mm in enumerate(spacing or (1.0, 1.0)):
            geometry[:3, axis] *= mm / np.linalg.norm(geometry[:3, axis])
    else:
        metadata["pixel_spacing"] = "none in a PNG/JPEG: 1 mm per pixel"
    return Volume(np.ascontiguousarray(array[None]), geometry, stem, metadata)
