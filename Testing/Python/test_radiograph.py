"""X-ray inputs: DICOM radiographs made here (MONOCHROME1 and MONOCHROME2, pixel spacing), PNG and JPEG, read by
medai.radiograph through medai.io.read_image, classified by `medai classify`, and loaded into a (headless) Slicer scene."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from classify_helpers import keras_pneumonia_card
from medai.io import read_image
from medai.radiograph import is_radiograph, read_radiograph


def chest(height: int = 40, width: int = 50) -> np.ndarray:
    """uint16 'radiograph' (bone bright in display terms): a bright vertical spine band on a dim body."""
    img = np.full((height, width), 300, np.uint16)
    img[:, width // 2 - 3: width // 2 + 3] = 3000
    img[5, 7] = 0  # one dark pixel to check exact inversion
    return img


def write_dicom(path, array: np.ndarray, photometric: str = "MONOCHROME2", imager_spacing=(0.5, 0.25),
                pixel_spacing: str | None = None):
    """A DX DICOM file with ImagerPixelSpacing ``imager_spacing`` (row, column mm) and, if given, a PixelSpacing
    tag. MONOCHROME1 is set in the written header (SimpleITK's writer always writes MONOCHROME2; the value has
    the same length, so the bytes are swapped)."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((imager_spacing[1], imager_spacing[0]))
    img.SetMetaData("0008|0060", "DX")
    if pixel_spacing:
        img.SetMetaData("0028|0030", pixel_spacing)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    target = path if path.suffix == ".dcm" else path.with_name(path.name + ".dcm")
    writer.SetFileName(str(target))
    writer.Execute(img)
    target.replace(path)
    if photometric == "MONOCHROME1":
        data = path.read_bytes()
        assert data.count(b"MONOCHROME2 ") == 1
        path.write_bytes(data.replace(b"MONOCHROME2 ", b"MONOCHROME1 "))
    return path


def test_monochrome2_dicom_keeps_values_and_pixel_spacing(tmp_path):
    path = write_dicom(tmp_path / "m2.dcm", chest(), imager_spacing=(0.1, 0.1), pixel_spacing="0.5\\0.25")
    vol = read_image(path)
    assert vol.array.shape == (1, 40, 50) and vol.metadata["photometric_interpretation"] == "MONOCHROME2"
    np.testing.assert_array_equal(vol.array[0], chest())
    np.testing.assert_allclose(vol.spacing[:2], [0.25, 0.5])  # columns (i) 0.25 mm, rows (j) 0.5 mm
    assert vol.metadata["pixel_spacing"] == "PixelSpacing"


def test_monochrome1_dicom_is_inverted_so_bone_is_bright(tmp_path):
    stored = chest().max() + chest().min() - chest().astype(np.int64)  # how a MONOCHROME1 system stores it
    path = write_dicom(tmp_path / "m1", stored.astype(np.uint16), "MONOCHROME1")  # no suffix: found by its DICM preamble
    assert is_radiograph(path)
    vol = read_image(path)
    assert vol.metadata["photometric_interpretation"] == "MONOCHROME1" and "inverted" in vol.metadata
    np.testing.assert_array_equal(vol.array[0], chest())  # exactly the MONOCHROME2 picture, in the stored range
    assert vol.array[0, 0, 25] > vol.array[0, 0, 0]  # spine brighter than the body
    np.testing.assert_allclose(vol.spacing[:2], [0.25, 0.5])  # no PixelSpacing: the detector's spacing
    assert vol.metadata["pixel_spacing"].startswith("ImagerPixelSpacing")


def test_png_and_jpeg_grey_saved_as_rgb_become_one_channel(tmp_path):
    grey = (chest() // 12).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey.jpg", quality=95)
    png, jpg = read_image(tmp_path / "rgb.png"), read_image(tmp_path / "grey.jpg")
    assert png.array.shape == (1, 40, 50) and png.num_components == 1
    np.testing.assert_array_equal(png.array[0], grey)
    assert jpg.array.shape == (1, 40, 50) and np.abs(jpg.array[0].astype(int) - grey).max() < 12
    colour = np.zeros((40, 50, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert read_radiograph(tmp_path / "colour.png").num_components == 3  # true colour stays colour


def test_classify_reads_dicom_radiographs_like_the_png(tmp_path):
    from medai.cli import main

    card = keras_pneumonia_card(tmp_path / "pneumonia")
    grey = (chest() // 12).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "chest.png")
    stored = (grey.max() + grey.min() - grey.astype(np.int64)).astype(np.uint16)
    write_dicom(tmp_path / "chest.dcm", stored, "MONOCHROME1")
    out = tmp_path / "scores.csv"
    assert main(["classify", str(tmp_path / "chest.png"), str(tmp_path / "chest.dcm"), "-m", str(card), "-o", str(out),
                 "--explain", str(tmp_path / "heat.nii.gz")]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["image"] for r in rows] == ["chest.png", "chest.dcm"]
    # the same picture after inversion (values 0..255 as the card's scale_range expects): the same scores
    assert float(rows[0]["pneumonia"]) == pytest.approx(float(rows[1]["pneumonia"]), abs=1e-4)
    heat = read_image(tmp_path / "heat_chest.dcm.nii.gz")
    np.testing.assert_allclose(heat.spacing[:2], [0.25, 0.5])  # the heatmap lies on the DICOM's own grid


def test_radiograph_loads_into_a_slicer_scene(tmp_path):
    from medai.slicer.headless import load_volume, make_headless_slicer

    scene = make_headless_slicer()
    stored = chest().max() + chest().min() - chest().astype(np.int64)
    node = load_volume(write_dicom(tmp_path / "cr.dcm", stored.astype(np.uint16), "MONOCHROME1"), scene)
    import slicer.util

    assert node.GetScene() is scene and node.GetName() == "cr.dcm"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node)[0], chest())
    np.testing.assert_allclose(node.GetSpacing()[:2], [0.25, 0.5])
