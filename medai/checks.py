"""Input checks before any work, and plausibility checks after: bad input never gives a silent, confident answer.

* :func:`check_file`: a file that is truncated, holds NaN/Inf that the reader would turn into
  numbers, or has no voxel size (NIfTI pixdim 0) is an error, whatever the reader makes of it.
* :func:`input_warnings`: volumes about to go into a model. A constant image, a channel outside
  the first input, or a single slice given to a 3D model are errors; a near-constant image, a
  channel that covers little of the first input and intensities far outside the card's expected
  range are warnings that go into the result's ``warnings``.
* :func:`heatmap_warnings`, :func:`plausibility_warnings`: results that look wrong are flagged.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .geometry import GeometryError, Volume, check_voxels, same_grid


class InputError(GeometryError):
    """An input that no model can be trusted to read correctly; the message names it and what to do."""


# --- files ---------------------------------------------------------------------------------------

# NIfTI-1 datatype code -> numpy dtype (the ones a scanner or a tool writes)
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8",
                128: "u1", 2304: "u1"}
_NIFTI_COMPONENTS = {128: 3, 2304: 4}  # RGB24, RGBA32


def _read_all(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip; a cut-off gzip stream is an :class:`InputError`."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path}: the compressed file is truncated or damaged ({exc}); copy or export it again") from exc


def check_nifti(path: Path) -> None:
    """Truncated data, NaN/Inf voxels (SimpleITK reads them as 0) and pixdim 0 (read as 1 mm) are errors."""
    data = _read_all(path)
    if len(data) < 348:
        raise InputError(f"{path}: too short for a NIfTI header ({len(data)} bytes); the file is truncated")
    endian = "<" if struct.unpack("<i", data[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", data[:4])[0] != 348:
        return  # NIfTI-2 or not NIfTI: left to the reader
    dim = struct.unpack(endian + "8h", data[40:56])
    datatype, bitpix = struct.unpack(endian + "2h", data[70:74])
    pixdim = struct.unpack(endian + "8f", data[76:108])
    vox_offset = int(struct.unpack(endian + "f", data[108:112])[0])
    ndim = max(1, min(int(dim[0]), 7))
    shape = [max(int(d), 1) for d in dim[1 : ndim + 1]]
    for axis in range(min(ndim, 3)):
        if not np.isfinite(pixdim[axis + 1]) or pixdim[axis + 1] == 0:
            raise InputError(
                f"{path}: the header gives voxel size {pixdim[axis + 1]} along axis {axis} (pixdim 0: size unknown); "
                "MedAI will not guess 1 mm. Fix the header (e.g. nibabel: img.header.set_zooms(...)) or convert it with the right spacing"
            )
    count = int(np.prod(shape))
    needed = vox_offset + count * max(int(bitpix), 8) // 8
    if len(data) < needed:
        raise InputError(f"{path}: truncated: the header needs {needed} bytes of voxel data and header, the file holds {len(data)}; "
                         "copy or export it again")
    if datatype in (16, 64):
        dtype = np.dtype(endian + _NIFTI_TYPES[datatype])
        voxels = np.frombuffer(data, dtype=dtype, count=count, offset=vox_offset)
        bad = int(count - np.count_nonzero(np.isfinite(voxels)))
        if bad:
            raise InputError(f"{path}: {bad} voxel(s) are NaN or infinite (a reader would show them as 0); "
                             "fill or mask them before running a model")


def check_file(path: str | Path) -> None:
    """File-level checks before reading: NIfTI in depth (see :func:`check_nifti`), any gzip stream complete."""
    path = Path(path)
    if not path.is_file():
        return
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        check_nifti(path)
    elif name.endswith(".gz"):
        _read_all(path)
    elif name.endswith((".jpg", ".jpeg")):  # libjpeg fills a cut-off JPEG with grey and only warns
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            tail = fh.read().rstrip(b"\x00")
        if not tail.endswith(b"\xff\xd9"):
            raise InputError(f"{path}: the JPEG file is truncated (no end-of-image marker); copy or export it again")


# --- volumes going into a model ---------------------------------------------------------------------

# Intensity ranges by modality, used when a card names the modality but gives no "range".
MODALITY_RANGES = {"CT": (-1100.0, 4000.0)}
NEAR_CONSTANT = 0.995  # fraction of voxels holding one value above which an image is flagged


def _sample(array: np.ndarray, n: int = 1 << 20) -> np.ndarray:
    flat = array.reshape(-1)
    return flat[:: max(1, flat.size // n)]


def _constancy(volume: Volume, alone: bool) -> list[str]:
    """A constant image is an error when it is the only information (``alone``), else a warning."""
    sample = _sample(volume.array)
    lo, hi = float(np.min(sample)), float(np.max(sample))
    if lo == hi and float(np.min(volume.array)) == float(np.max(volume.array)):
        text = f"{volume.name}: every voxel is {lo:g}; a constant image holds nothing a model can find"
        if alone:
            raise InputError(f"{text}. Check that the right image was loaded")
        return [f"{text}; the result rests on the other input(s) only"]
    values, counts = np.unique(sample, return_counts=True)
    top = counts.max() / sample.size
    if top >= NEAR_CONSTANT:
        return [f"{volume.name}: {100 * top:.1f} % of the voxels are {values[np.argmax(counts)]:g} (a near-constant image); "
                "the result may be meaningless"]
    return []


def coverage(volume: Volume, reference: Volume, n: int = 9) -> float:
    """Fraction of ``reference``'s extent (an n^3 grid of points) that lies inside ``volume``."""
    axes = [np.linspace(0, s - 1, n) for s in reference.shape_ijk]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    ras = reference.ijk_to_ras[:3, :3] @ ijk.T + reference.ijk_to_ras[:3, 3:4]
    inv = np.linalg.inv(volume.ijk_to_ras)
    other = inv[:3, :3] @ ras + inv[:3, 3:4]
    dims = np.array(volume.shape_ijk)[:, None]
    inside = np.all((other >= -0.5) & (other <= dims - 0.5), axis=0)
    return float(inside.mean())


def _overlap(volume: Volume, reference: Volume) -> list[str]:
    if same_grid(volume, reference):
        return []
    covered = coverage(volume, reference)
    if covered == 0.0:
        raise InputError(f"{volume.name} does not overlap {reference.name} in space (its grid lies elsewhere); as a channel it "
                         "would be all zeros. Select images of the same patient and session, or register them first")
    if covered < 0.5:
        return [f"{volume.name} covers only {100 * covered:.0f} % of {reference.name}; outside it that channel is zero"]
    return []


def _intensity(volume: Volume, expected: dict, model_name: str) -> list[str]:
    rng = expected.get("range")
    modality = str(expected.get("modality", "")).upper()
    if rng is None and modality in MODALITY_RANGES:
        rng = MODALITY_RANGES[modality]
    if not rng or volume.array.ndim != 3:
        return []
    lo, hi = float(rng[0]), float(rng[1])
    p1, p99 = (float(v) for v in np.percentile(_sample(volume.array).astype(np.float64), [1, 99]))
    span = hi - lo
    if p99 < lo - 0.1 * span or p1 > hi + 0.1 * span or p99 - p1 > 10 * span:
        what = f"{expected.get('name') or modality or 'input'}"
        return [f"{volume.name}: intensities {p1:.4g} .. {p99:.4g} (1st-99th percentile) are far outside the {lo:g} .. {hi:g} "
                f"model {model_name} expects for {what}; is it the right modality?"]
    return []


def input_warnings(volumes: list[Volume], inputs: list[dict] | None = None, model_name: str = "the model",
                   spatial_dims: int | None = None) -> list[str]:
    """Check volumes about to go into a model: errors are raised (:class:`InputError`), doubts returned as warnings.

    ``inputs`` are the card's input descriptions (``modality``, optional ``range``); ``spatial_dims``
    3 refuses single-slice images.
    """
    warnings: list[str] = []
    for volume in volumes:
        check_voxels(volume)  # empty, NaN or infinite: errors first
        if spatial_dims == 3 and min(volume.shape_ijk) < 2:
            raise InputError(f"model {model_name} needs a 3D volume, but {volume.name} has a single slice (a 2D image, dimensions "
                             f"{volume.shape_ijk}); give the whole 3D series, or use a 2D model")
    constant = [_constancy(v, alone=False) for v in volumes]
    if len(volumes) > 1 and all(c and "every voxel" in c[0] for c in constant):
        raise InputError(f"every input ({', '.join(v.name for v in volumes)}) is constant; check that the right images were loaded")
    for n, volume in enumerate(volumes):
        warnings += _constancy(volume, alone=len(volumes) == 1) if len(volumes) == 1 else constant[n]
        if n > 0:
            warnings += _overlap(volume, volumes[0])
        if inputs and n < len(inputs) and isinstance(inputs[n], dict):
            warnings += _intensity(volume, inputs[n], model_name)
    return warnings


# --- results ---------------------------------------------------------------------------------------


HOT_EVERYWHERE = 0.9  # a hot spot (heat >= half the peak, as medai.explain.localize finds them) covering this much of the image


def heatmap_warnings(heatmap: np.ndarray | None, name: str, threshold: float = 0.5) -> list[str]:
    """A heatmap that is flat, or one hot spot covering nearly the whole image, explains nothing: say so."""
    if heatmap is None or heatmap.size == 0:
        return []
    lo, hi = float(np.min(heatmap)), float(np.max(heatmap))
    if hi - lo < 1e-6:
        return [f"{name}: the explanation heatmap is constant ({hi:.3g} everywhere); it does not show where the evidence is"]
    hot = float(np.mean(heatmap >= threshold * hi)) if hi > 0 else 0.0
    if hot >= HOT_EVERYWHERE:
        return [f"{name}: the explanation heatmap is hot over {100 * hot:.0f} % of the image; it does not localise the evidence"]
    return []


def plausibility_warnings(expected: dict[int, tuple[float, float]], volumes_ml: dict[int, tuple[str, float]],
                          model_name: str) -> list[str]:
    """Labels whose volume lies outside the card's ``expected.volume_ml`` ranges ({label value: (min, max)})."""
    out = []
    for value, bounds in expected.items():
        if value not in volumes_ml:
            continue
        name, ml = volumes_ml[value]
        if not float(bounds[0]) <= ml <= float(bounds[1]):
            out.append(f"{name}: {ml:.1f} mL is outside the {float(bounds[0]):g}-{float(bounds[1]):g} mL that model {model_name} "
                       "expects; check the input (modality, field of view, orientation) before using this result")
    return out
