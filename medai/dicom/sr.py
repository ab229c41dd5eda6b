"""DICOM SR (TID 1500 Measurement Report, Comprehensive 3D SR) for classification and segmentation results.

* Classification, per case: class scores as measurements (TID 1501), the predicted class(es) as
  a qualitative evaluation "Finding", and each finding (hot spot, region component) as a
  volumetric ROI (TID 1411): an ellipsoid of the finding's volume around its centre, with its size
  (mL) and peak score.
* Segmentation: each segment's volume (mL), as a volumetric ROI referencing the segment of the
  DICOM SEG when one was written, else as a measurement group naming the segment.

Every report references the source series' images as evidence (and the SEG, when given).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..geometry import LPS_TO_RAS
from . import DicomError, require_highdicom
from .codes import LOCAL_SCHEME, Algorithm, coded, local_code, parse_terminology
from .seg import require_source
from .series import DicomSource

IMAGING_PROCEDURE = ("363679005", "SCT", "Imaging procedure")
FINDING = ("121071", "DCM", "Finding")
VOLUME = ("118565006", "SCT", "Volume")
MILLILITER = ("ml", "UCUM", "milliliter")
NO_UNITS = ("1", "UCUM", "no units")


def _algorithm_id(algorithm: Algorithm | None):
    hd = require_highdicom()
    if algorithm is None:
        return None
    params = {"sha256": algorithm.sha256} if algorithm.sha256 else None
    return hd.sr.AlgorithmIdentification(algorithm.name[:64], algorithm.version_text[:64], parameters=params)


def _observation_context(algorithm: Algorithm | None):
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="MedAI",
                                                       model_name=(algorithm.name if algorithm else "MedAI")[:64])
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _tracking(name: str):
    hd = require_highdicom()
    return hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name[:64])


def _measurement(name, value: float, unit=NO_UNITS, algorithm: Algorithm | None = None):
    hd = require_highdicom()
    return hd.sr.Measurement(name=name if not isinstance(name, tuple) else coded(name), value=float(value),
                             unit=coded(unit), algorithm_id=_algorithm_id(algorithm))


def _source_images(source: DicomSource) -> list:
    hd = require_highdicom()
    return [hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in source.headers]


def _ellipsoid(centre_ras, size_ml: float) -> np.ndarray:
    """Six LPS points (3 axes' end points) of a sphere of ``size_ml`` around ``centre_ras``."""
    radius = max(0.5, float(np.cbrt(3.0 * size_ml * 1000.0 / (4.0 * np.pi))))
    centre = (LPS_TO_RAS[:3, :3] @ np.asarray(centre_ras, dtype=float))
    axes = np.eye(3) * radius
    return np.array([centre - axes[0], centre + axes[0], centre - axes[1], centre + axes[1], centre - axes[2], centre + axes[2]])


def _save(report_content, path: Path, source: DicomSource, evidence_extra: list, description: str, algorithm: Algorithm | None) -> Path:
    hd = require_highdicom()
    from pydicom.dataset import Dataset

    from .. import __version__

    evidence = list(source.headers) + list(evidence_extra)
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence, content=report_content, series_instance_uid=hd.UID(),
            series_number=int(source.headers[0].get("SeriesNumber") or 0) + 2000, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="MedAI", series_description=description[:64], is_complete=True,
            software_versions=f"medai {__version__}", manufacturer_model_name=(algorithm.name if algorithm else "MedAI")[:64])
    except AttributeError as exc:  # a patient/study attribute the SR must copy is missing in the source
        raise DicomError(f"the source series {source.series.uid} lacks a patient or study attribute a DICOM SR must copy ({exc})") from exc
    scheme = Dataset()  # declares the private scheme of the class-name codes
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = "MedAI model output classes"
    scheme.CodingSchemeResponsibleOrganization = "MedAI"
    sr.CodingSchemeIdentificationSequence = [scheme]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    sr.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path


def _report(groups: list, algorithm: Algorithm | None):
    hd = require_highdicom()
    return hd.sr.MeasurementReport(observation_context=_observation_context(algorithm),
                                   procedure_reported=coded(IMAGING_PROCEDURE), imaging_measurements=groups)


def write_classification_sr(result, path: str | os.PathLike, algorithm: Algorithm | None = None, case_index: int = 0) -> Path:
    """A TID 1500 report of one case of a :class:`~medai.engine.classify.ClassificationResult`."""
    hd = require_highdicom()
    case = result.cases[case_index]
    source = require_source(case.reference, "DICOM SR")
    frame_of_reference = str(source.headers[0].FrameOfReferenceUID)
    unit = (result.unit, "UCUM", result.unit) if result.task == "regression" and result.unit else NO_UNITS
    scores = [_measurement(local_code(i, f"{name} score"), s, unit, algorithm)
              for i, (name, s) in enumerate(zip(result.class_names, case.scores))]
    evaluations = [hd.sr.QualitativeEvaluation(coded(FINDING), local_code(i, result.class_names[i])) for i in case.predicted]
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(f"{case.name} classification"), algorithm_id=_algorithm_id(algorithm),
        measurements=scores, qualitative_evaluations=evaluations or None, source_images=_source_images(source))]
    series = hd.sr.SourceSeriesForSegmentation(str(source.series.uid))
    for finding in case.findings:
        surface = hd.sr.VolumeSurface("ELLIPSOID", _ellipsoid(finding.position_ras, finding.size_ml), frame_of_reference,
                                      source_series=series)
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(f"{case.name} {finding.name}"), referenced_volume_surface=surface,
            finding_type=local_code(100, finding.kind), algorithm_id=_algorithm_id(algorithm),
            measurements=[_measurement(VOLUME, finding.size_ml, MILLILITER, algorithm),
                          _measurement(local_code(101, "peak explanation score"), finding.peak_score, NO_UNITS, algorithm)]))
    return _save(_report(groups, algorithm), path, source, [], f"{result.model_name} classification", algorithm)


def write_segmentation_sr(result, path: str | os.PathLike, algorithm: Algorithm | None = None, seg_path: str | os.PathLike | None = None) -> Path:
    """A TID 1500 report of segment volumes, referencing the segments of the DICOM SEG at ``seg_path`` when given."""
    hd = require_highdicom()
    source = require_source(result.reference, "DICOM SR")
    seg = hd.seg.segread(str(seg_path)) if seg_path else None
    groups = []
    for number, label in enumerate(result.labels, start=1):
        codes = parse_terminology(label.terminology)
        measurement = _measurement(VOLUME, result.volume_ml(label), MILLILITER, algorithm)
        tracking = _tracking(f"{label.name}")
        if seg is not None:
            ref = hd.sr.ReferencedSegment(str(seg.SOPClassUID), str(seg.SOPInstanceUID), number,
                                          source_series=hd.sr.SourceSeriesForSegmentation(str(source.series.uid)))
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_segment=ref, finding_type=coded(codes.type),
                algorithm_id=_algorithm_id(algorithm), measurements=[measurement]))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=coded(codes.type), algorithm_id=_algorithm_id(algorithm),
                measurements=[measurement], source_images=_source_images(source)))
    return _save(_report(groups, algorithm), path, source, [seg] if seg is not None else [],
                 f"{result.model_name} segment volumes", algorithm)
