"""Build small, valid DICOM series in tests (pydicom), and validate written objects with dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medai.geometry import LPS_TO_RAS, Volume

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _patient_study(ds, study_uid: str) -> None:
    ds.PatientName = "Test^MedAI"
    ds.PatientID = "MEDAI001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""


def write_series(volume: Volume, folder: Path, *, series_uid: str | None = None, study_uid: str | None = None,
                 frame_of_reference: str | None = None, modality: str = "CT", number: int = 1, description: str = "test",
                 ijk_to_lps: np.ndarray | None = None, shuffle: bool = True) -> list[str]:
    """Write ``volume`` as single-frame CT images (int16, rescaled) with exact LPS geometry; returns the SOP Instance UIDs.

    ``ijk_to_lps`` overrides the geometry (for example a sheared, gantry-tilted stack); its I and J
    columns must be orthogonal. Files are written in shuffled order with shuffled names.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    m = LPS_TO_RAS @ volume.ijk_to_ras if ijk_to_lps is None else ijk_to_lps
    si, sj = np.linalg.norm(m[:3, 0]), np.linalg.norm(m[:3, 1])
    row, col = m[:3, 0] / si, m[:3, 1] / sj
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference = frame_of_reference or generate_uid()
    arr = np.asarray(volume.array)
    uids = []
    order = np.random.default_rng(0).permutation(arr.shape[0]) if shuffle else range(arr.shape[0])
    for k in order:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        _patient_study(ds, study_uid)
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.InstanceNumber = int(k) + 1
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "MedAI tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in m[:3, 3] + m[:3, 2] * k]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.PixelSpacing = [f"{sj:.6f}", f"{si:.6f}"]
        ds.SliceThickness = f"{abs(float(np.dot(m[:3, 2], np.cross(row, col)))):.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.PixelData = (np.asarray(arr[k], dtype=np.int16) + 1024).astype(np.int16).tobytes()
        pydicom.dcmwrite(folder / f"IM{generate_uid()[-8:]}.dcm", ds, enforce_file_format=True)
        uids.append(str(ds.SOPInstanceUID))
    return uids


def write_sitk_series(image, folder: Path, series_uid: str) -> Path:
    """``image`` (a SimpleITK image) as one DICOM series of its slices, written by SimpleITK into a new ``folder``."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        sl.SetMetaData("0020|000e", series_uid)
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0020|0013", str(k))
        sl.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy reports for ``path`` (skips the test when dciodvfy is absent)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; scripts/setup.sh installs it when run as root")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
