"""DICOM in, DICOM out: series reading (several series, enhanced multi-frame, gantry tilt), DICOM SEG and SR.

Reading needs only pydicom and SimpleITK; writing SEG and SR needs highdicom (pinned in
requirements.txt; inside Slicer it is installed on first use, see :func:`require_highdicom`).
"""

from __future__ import annotations

HIGHDICOM_PIN = "highdicom==0.28.2"
ENCODINGS = ("auto", "binary", "labelmap")  # DICOM SEG encodings MedAI writes


class DicomError(ValueError):
    """A DICOM input or output MedAI cannot handle; the message names the file and what to do."""


def require_highdicom():
    """Import highdicom, or explain how to install it."""
    try:
        import highdicom
    except ImportError as exc:
        raise DicomError(
            f"writing DICOM SEG/SR needs highdicom; install it with `pip install {HIGHDICOM_PIN}` "
            f"(in Slicer: slicer.util.pip_install('{HIGHDICOM_PIN}'))"
        ) from exc
    return highdicom
