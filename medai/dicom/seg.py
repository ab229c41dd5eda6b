"""DICOM SEG: write a segmentation result referencing its source series, and read a SEG back.

Encoding: BINARY (1 bit per voxel, empty frames left out) is what every SEG reader understands
(Slicer, OHIF, dcmqi, dciodvfy) and is what ``"auto"`` picks. LABELMAP (Label Map Segmentation,
DICOM 2024: one 8/16-bit frame per slice for all segments, JPEG-LS lossless) is written on request
(``encoding="labelmap"``) for non-overlapping labels; it is much smaller for many segments, but
older readers and validators (dicom3tools 2022) do not know its SOP class yet.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..geometry import LPS_TO_RAS, Volume
from ..results import Label, SegmentationResult
from . import ENCODINGS, DicomError, require_highdicom
from .codes import Algorithm, coded, parse_terminology, terminology_string, SegmentCodes
from .series import DicomSource, dicom_source, volume_from_highdicom

log = logging.getLogger(__name__)

OTHER_FORMATS = ".seg.nrrd, .nii.gz, .nrrd or .mha"


def require_source(volume: Volume, what: str = "DICOM SEG") -> DicomSource:
    """The DICOM series ``volume`` was read from, or an error naming the formats that work without one."""
    source = dicom_source(volume)
    if source is None:
        raise DicomError(f"{volume.name}: a {what} must reference a DICOM source series, but this input was not read from DICOM; "
                         f"give a DICOM series folder as input, or write {OTHER_FORMATS} instead")
    return source


def choose_encoding(result: SegmentationResult, encoding: str = "auto") -> str:
    """``"BINARY"`` or ``"LABELMAP"`` for ``result`` (LABELMAP needs non-overlapping labels: one layer)."""
    encoding = encoding.lower()
    if encoding not in ENCODINGS:
        raise ValueError(f"SEG encoding {encoding!r} unknown; use one of {', '.join(ENCODINGS)}")
    if encoding == "labelmap" and len(result.layers) > 1:
        raise DicomError("LABELMAP SEG cannot hold overlapping (multi-label) segments; use encoding 'binary'")
    return "BINARY" if encoding == "auto" else encoding.upper()


def _hd_volume(reference: Volume, array: np.ndarray, frame_of_reference: str, channels: dict | None = None):
    """A ``highdicom.Volume`` (axes slice, row, column; LPS) holding ``array`` ([k, j, i, ...]) on ``reference``'s grid."""
    hd = require_highdicom()
    affine = (LPS_TO_RAS @ reference.ijk_to_ras)[:, [2, 1, 0, 3]]
    return hd.Volume(array, affine, "PATIENT", frame_of_reference, channels=channels)


def segment_descriptions(labels: list[Label], algorithm: Algorithm | None) -> list:
    """One ``SegmentDescription`` per label (numbered 1, 2, ... in order) with codes, colour and algorithm."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    algo = None
    if algorithm is not None:
        params = {"sha256": algorithm.sha256} if algorithm.sha256 else None
        algo = hd.AlgorithmIdentificationSequence(algorithm.name[:64], codes.cid7162.ArtificialIntelligence,
                                                  algorithm.version_text[:64], source="MedAI", parameters=params)
    out = []
    for n, lab in enumerate(labels, start=1):
        c = parse_terminology(lab.terminology)
        out.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=lab.name[:64],
            segmented_property_category=coded(c.category), segmented_property_type=coded(c.type),
            algorithm_type="AUTOMATIC" if algo is not None else "MANUAL", algorithm_identification=algo,
            tracking_uid=hd.UID(), tracking_id=lab.name[:64],
            anatomic_regions=[coded(c.region)] if c.region else None,
            display_color=hd.color.CIELabColor.from_rgb(*(min(255.0, max(0.0, 255.0 * v)) for v in lab.color)),
        ))
    return out


def _segment_array(result: SegmentationResult, encoding: str) -> tuple[np.ndarray, dict | None]:
    """Label-map style ([k, j, i], values = segment numbers) for one layer, stacked masks otherwise."""
    if len(result.layers) == 1:
        layer = result.layers[0]
        lut = np.zeros(int(max([lab.value for lab in result.labels] + [int(layer.max(initial=0))])) + 1,
                       dtype=np.uint8 if len(result.labels) < 256 else np.uint16)
        for n, lab in enumerate(result.labels, start=1):
            lut[lab.value] = n
        return lut[layer], None
    stacked = np.stack([result.mask(lab) for lab in result.labels], axis=-1).astype(np.uint8)
    return stacked, {"SegmentNumber": list(range(1, len(result.labels) + 1))}


def build_seg(result: SegmentationResult, algorithm: Algorithm | None = None, encoding: str = "auto",
              series_description: str | None = None):
    """The ``highdicom.seg.Segmentation`` of ``result``, referencing the DICOM series its reference volume came from."""
    hd = require_highdicom()
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

    from .. import __version__

    source = require_source(result.reference)
    kind = choose_encoding(result, encoding)
    array, channels = _segment_array(result, kind)
    first = source.headers[0]
    volume = _hd_volume(result.reference, array, str(first.FrameOfReferenceUID), channels)
    model = algorithm.name if algorithm else (result.model_name or "manual")
    try:
        return hd.seg.Segmentation(
            source_images=source.headers, pixel_array=volume, segmentation_type=kind,
            segment_descriptions=segment_descriptions(result.labels, algorithm),
            series_instance_uid=hd.UID(), series_number=int(first.get("SeriesNumber") or 0) + 1000,
            sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="MedAI", manufacturer_model_name=model[:64], software_versions=f"medai {__version__}",
            device_serial_number="0", series_description=(series_description or f"{model} segmentation")[:64],
            content_label="MEDAI", content_description=f"{model} {algorithm.version_text if algorithm else ''}".strip()[:64],
            content_creator_name="MedAI^",
            transfer_syntax_uid=JPEGLSLossless if kind == "LABELMAP" else ExplicitVRLittleEndian,
            omit_empty_frames=bool(np.any(array)),  # an all-empty result keeps its frames: a SEG needs at least one
        )
    except (ValueError, TypeError) as exc:
        raise DicomError(f"cannot build a DICOM SEG for {result.reference.name}: {exc}") from exc


def write_seg(result: SegmentationResult, path: str | os.PathLike, algorithm: Algorithm | None = None,
              encoding: str = "auto") -> Path:
    """Write ``result`` as a DICOM SEG file (atomically: a failed write leaves nothing under ``path``)."""
    path = Path(path)
    seg = build_seg(result, algorithm, encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    seg.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path


# --- reading -----------------------------------------------------------------------------------


def _find_reference_grid(path: Path, seg) -> Volume | None:
    """The grid of the series the SEG references, when its files lie beside the SEG (its folder or a sub-folder)."""
    from .series import TILT_TOLERANCE, _single_frame_geometry, scan_folder

    wanted = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    folders = [path.parent] + [p for p in sorted(path.parent.iterdir()) if p.is_dir()]
    for folder in folders:  # not recursive: a SEG's folder may be large
        for series in scan_folder(folder, recursive=False).values():
            if series.uid in wanted and series.is_image and all(int(h.get("NumberOfFrames", 1) or 1) == 1 for h in series.headers):
                try:
                    _, ijk_to_lps, normal = _single_frame_geometry(series)
                except DicomError:
                    continue
                step = ijk_to_lps[:3, 2] / np.linalg.norm(ijk_to_lps[:3, 2])
                if np.linalg.norm(np.cross(step, normal)) > TILT_TOLERANCE:
                    continue  # tilted: the SEG lies on a resampled grid, not the series'
                rows, cols = int(series.headers[0].Rows), int(series.headers[0].Columns)
                return Volume(np.zeros((len(series.headers), rows, cols), np.uint8), LPS_TO_RAS @ ijk_to_lps, name=series.uid)
    return None


def place_on_grid(volume: Volume, reference: Volume) -> Volume:
    """``volume`` (a labelmap) on ``reference``'s grid: an exact copy when the grids share voxels, else nearest neighbour."""
    from ..resample import resample_volume_to

    t = np.linalg.solve(reference.ijk_to_ras, volume.ijk_to_ras)
    offset = np.round(t[:3, 3])
    if np.allclose(t[:3, :3], np.eye(3), atol=1e-3) and np.allclose(t[:3, 3], offset, atol=1e-2):
        out = np.zeros(reference.array.shape[:3] + volume.array.shape[3:], dtype=volume.array.dtype)
        oi, oj, ok = (int(o) for o in offset)
        k, j, i = volume.array.shape[:3]
        dst = tuple(slice(max(0, o), min(n, o + m)) for o, m, n in zip((ok, oj, oi), (k, j, i), out.shape[:3]))
        src = tuple(slice(d.start - o, d.stop - o) for d, o in zip(dst, (ok, oj, oi)))
        if all(d.stop > d.start for d in dst):
            out[dst] = volume.array[src]
        return Volume(out, reference.ijk_to_ras.copy(), volume.name, dict(volume.metadata))
    log.info("%s: resampling the SEG onto the reference grid (nearest neighbour)", volume.name)
    return resample_volume_to(volume, reference, linear=False)


def _labels_of(seg) -> list[Label]:
    labels = []
    for desc in seg.SegmentSequence:
        number = int(desc.SegmentNumber)
        if number == 0:  # a LABELMAP SEG's background
            continue
        cat = desc.SegmentedPropertyCategoryCodeSequence[0]
        typ = desc.SegmentedPropertyTypeCodeSequence[0]
        region = desc.AnatomicRegionSequence[0] if "AnatomicRegionSequence" in desc else None
        codes = SegmentCodes((cat.CodeValue, cat.CodingSchemeDesignator, cat.CodeMeaning),
                             (typ.CodeValue, typ.CodingSchemeDesignator, typ.CodeMeaning), None,
                             (region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning) if region else None)
        color = Label.default_color(number)
        if "RecommendedDisplayCIELabValue" in desc:
            hd = require_highdicom()
            lab = [int(v) for v in desc.RecommendedDisplayCIELabValue]
            color = tuple(c / 255.0 for c in hd.color.CIELabColor.from_dicom_value(lab).to_rgb())
        labels.append(Label(number, str(desc.SegmentLabel), color, len(labels), terminology_string(codes)))
    return labels


def read_seg(path: str | os.PathLike, reference: Volume | None = None) -> SegmentationResult:
    """A DICOM SEG as a :class:`SegmentationResult` (one layer per segment, value 1).

    The grid is ``reference``'s when given, else the referenced series' when its files lie
    beside the SEG, else the SEG's own frames (which may leave out empty slices).
    """
    hd = require_highdicom()
    path = Path(path)
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # pydicom/highdicom raise many kinds for a file that is no SEG
        raise DicomError(f"{path}: cannot read this file as a DICOM SEG ({exc})") from exc
    labels = _labels_of(seg)
    try:
        hv = seg.get_volume(combine_segments=False, dtype=np.uint8)
    except (ValueError, RuntimeError) as exc:
        raise DicomError(f"{path}: the SEG's frames do not form one regular 3D volume ({exc})") from exc
    own = volume_from_highdicom(hv, path.name)
    reference = reference or _find_reference_grid(path, seg)
    if reference is not None:
        own = place_on_grid(own, reference)
    stacked = own.array if own.array.ndim == 4 else own.array[..., None]
    layers = [np.ascontiguousarray(stacked[..., n]).astype(np.uint8) for n in range(stacked.shape[3])]
    algo = seg.SegmentSequence[-1].get("SegmentationAlgorithmIdentificationSequence")
    name = str(algo[0].AlgorithmName) if algo else str(seg.get("ContentLabel", ""))
    ref = Volume(layers[0], own.ijk_to_ras, path.name)
    return SegmentationResult(ref, layers, [Label(1, lab.name, lab.color, lab.layer, lab.terminology) for lab in labels], name)


def read_seg_labelmap(path: str | os.PathLike) -> Volume:
    """A DICOM SEG as one labelmap volume: segment numbers as values (later segments win where they overlap)."""
    result = read_seg(path)
    labelmap = result.labelmap() if len(result.layers) > 1 else result.layers[0]
    return Volume(labelmap, result.reference.ijk_to_ras, Path(path).name.removesuffix(".dcm"), {"kind": "segmentation"})
