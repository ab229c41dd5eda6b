"""SlicerMONAIAuto3DSeg model zips: catalog, loading, refusals, and parity with that extension's inference script.

Every model here is a real MONAI SegResNetDS with fresh weights, saved as that extension's
checkpoints are (``{"config", "state_dict", "epoch", "best_metric"}``) in a zip with labels.csv.
The parity tests run :mod:`auto3dseg_reference` (the extension's script restated, reading and
writing NRRD) and MedAI in process on the same file, and require identical labelmaps.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import auto3dseg_reference  # noqa: E402
from conftest import REPO, oblique_affine  # noqa: E402

from medai.geometry import LPS_TO_RAS, Volume  # noqa: E402
from medai.io import read_image, write_volume  # noqa: E402
from medai.models.card import ModelLoadError  # noqa: E402
from medai.models.loader import load_model  # noqa: E402

LABEL_ROWS = [  # (value, name, category, type, modifier, region)
    (1, "Liver", ("SCT", "123037004", "Anatomical Structure"), ("SCT", "10200004", "Liver"), None, None),
    (2, "Left kidney", ("SCT", "123037004", "Anatomical Structure"), ("SCT", "64033007", "Kidney"), ("SCT", "7771000", "Left"), None),
    (3, "Cyst in left kidney", ("SCT", "49755003", "Morphologically Altered Structure"), ("SCT", "367643001", "Cyst"), None,
     ("SCT", "64033007", "Kidney")),
]
FIELDS = ["SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence", "SegmentedPropertyTypeModifierCodeSequence",
          "AnatomicRegionSequence", "AnatomicRegionModifierSequence"]


def labels_csv(n: int, names: list[str] | None = None) -> str:
    """labels.csv with the first ``n`` of LABEL_ROWS, or with ``names`` as values 1, 2, ... (no codes)."""
    rows = LABEL_ROWS[:n] if names is None else [(v, name, None, None, None, None) for v, name in enumerate(names, start=1)]
    out = io.StringIO()
    columns = ["LabelValue", "Name"] + [f"{f}.{p}" for f in FIELDS for p in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning")]
    writer = csv.writer(out)
    writer.writerow(columns)
    for value, name, *codes in rows:
        row = [value, name]
        for code in codes + [None]:
            row += list(code or ("", "", ""))
        writer.writerow(row)
    return out.getvalue()


def make_zip(folder: Path, zip_name: str, in_channels: int = 1, classes: int = 3, inner: str = "model", seed: int = 0,
             labels: bool = True, checkpoint: bool = True, extra: dict | None = None, label_names: list[str] | None = None,
             **config) -> Path:
    """An Auto3DSeg model zip: ``<inner>/model.pt`` (config + state_dict) and ``<inner>/labels.csv`` (``label_names`` if given)."""
    from monai.networks.nets import SegResNetDS

    torch.manual_seed(seed)
    network = {"_target_": "SegResNetDS", "init_filters": 8, "blocks_down": [1, 1, 1], "norm": "INSTANCE_NVFUSER",
               "in_channels": in_channels, "out_channels": classes, "dsdepth": 2}
    net = SegResNetDS(**{k: v for k, v in network.items() if k not in ("_target_", "norm")}, norm="INSTANCE")
    cfg = {"network": network, "roi_size": [32, 32, 32], "normalize_mode": "range", "intensity_bounds": [-100.0, 300.0],
           "orientation_ras": True, "crop_foreground": True, "resample_resolution": [1.5, 1.5, 1.5], "sigmoid": False,
           "input_channels": in_channels, "output_classes": classes, **config}
    buffer = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "config": cfg, "epoch": 7, "best_metric": 0.5, **(extra or {})}, buffer)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / zip_name
    with zipfile.ZipFile(path, "w") as z:
        if checkpoint:
            z.writestr(f"{inner}/model.pt", buffer.getvalue())
        if labels:
            z.writestr(f"{inner}/labels.csv", labels_csv(min(3, classes if not cfg["sigmoid"] else 3), label_names))
        z.writestr("README.txt", "test model")
    return path


def make_volume(path: Path, ijk_to_ras: np.ndarray, shape=(34, 30, 26), seed: int = 0, offset=(4, -3, 2)) -> Path:
    """A CT-like volume (air -1000, an off-centre body with structure) written as NRRD (LPS, as Slicer writes it)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape[::-1]], indexing="ij")
    centre = [n / 2 + o for n, o in zip(shape, offset)]
    r = ((i - centre[0]) / 11) ** 2 + ((j - centre[1]) / 9) ** 2 + ((k - centre[2]) / 8) ** 2
    arr = np.where(r < 1, 40 + 120 * np.cos(3 * r) + 60 * np.sin(i / 3.0), -1000).astype(np.float32)
    arr += rng.normal(0, 15, arr.shape).astype(np.float32)
    write_volume(Volume(arr.astype(np.int16), ijk_to_ras, name=path.stem), path)
    return path


pytestmark = pytest.mark.usefixtures("fresh_medai_home")  # remembered decisions and models: a fresh MEDAI_HOME, an empty cache


def reference_and_medai(model_zip: Path, images: list[Path], tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The labelmap ([k, j, i]) from the restated extension script and from MedAI, on the same files."""
    from medai.engine.segment import segment

    extracted = tmp_path / "extension" / model_zip.stem  # as the extension unpacks into ~/.MONAIAuto3DSeg/models/<id>
    with zipfile.ZipFile(model_zip) as z:
        z.extractall(extracted)
    model_pt = next(extracted.rglob("labels.csv")).parent / "model.pt"
    out = tmp_path / "reference.nrrd"
    auto3dseg_reference.main(str(model_pt), *[str(p) for p in images[:1]], str(out), *[str(p) for p in images[1:]])
    reference = read_image(out).array
    result = segment(load_model(model_zip, "cpu"), [read_image(p) for p in images])
    assert result.layers[0].shape == reference.shape
    return reference, result.layers[0]


# --- catalog ------------------------------------------------------------------------------------------


def test_catalog_lists_every_model_of_the_extension():
    from medai.models import catalog

    data = json.loads((REPO / "Resources" / "Catalog" / "models.d" / "auto3dseg.json").read_text())
    models = data["models"]
    assert len(models) == 33  # SlicerMONAIAuto3DSeg's Resources/Models.json at the recorded commit
    assert "SlicerMONAIAuto3DSeg" in data["generated_from"]
    names = [m["name"] for m in models]
    assert len(set(names)) == len(names)
    for m in models:
        assert m["task"] == "segmentation" and m["format"] == "auto3dseg" and m["modality"] in ("CT", "MR")
        assert m["source"]["url"].startswith("https://github.com/lassoan/SlicerMONAIAuto3DSeg/releases/download/Models/")
        assert m["source"]["url"].endswith(f"{m['extension_id']}.zip") and m["segments"] and m["license"]
        assert [i["channel"] for i in m["inputs"]] == list(range(len(m["inputs"])))
    flagged = {m["name"] for m in models if m["license_flag"]}
    assert {"auto3dseg-brats-gli", "auto3dseg-whole-head-05mm", "auto3dseg-whole-body-v2"} <= flagged
    assert "auto3dseg-abdominal-organs-3mm" not in flagged
    brats = next(m for m in models if m["name"] == "auto3dseg-brats-gli")
    assert [i["name"] for i in brats["inputs"]] == ["T2F", "T1C", "T1N", "T2W"]
    listed = {e.name: e for e in catalog.list_models()}
    assert set(names) <= set(listed)
    assert listed["auto3dseg-lungs"].source_text.endswith("lungs-v2.0.1.zip")


# --- loading ------------------------------------------------------------------------------------------


def test_zip_loads_with_labels_and_terminology(tmp_path):
    from medai.models.formats import format_for

    path = make_zip(tmp_path, "abdomen-test-v1.0.0.zip", inner="nested/model")
    assert format_for(path).name == "auto3dseg"
    model = load_model(path, "cpu")
    assert model.kind == "auto3dseg" and model.name == "abdomen-test-v1.0.0"
    assert [(lab.value, lab.name) for lab in model.labels] == [(1, "Liver"), (2, "Left kidney"), (3, "Cyst in left kidney")]
    kidney = model.labels[1].terminology.split("~")
    assert kidney[0] == "Segmentation category and type - DICOM master list"
    assert kidney[1:4] == ["SCT^123037004^Anatomical Structure", "SCT^64033007^Kidney", "SCT^7771000^Left"]
    cyst = model.labels[2].terminology.split("~")
    assert cyst[3] == "^^" and cyst[5] == "SCT^64033007^Kidney"
    assert model.card.raw["epoch"] == 7 and model.card.num_inputs == 1


def test_catalog_folder_holding_the_zip_takes_names_from_the_catalog(tmp_path):
    folder = tmp_path / "auto3dseg-prostate"  # what fetching the catalog entry leaves: the downloaded zip
    make_zip(folder, "prostate-v1.0.1.zip", in_channels=2, classes=3, normalize_mode="meanstd", extra_modalities={"image2": "meanstd"})
    from medai.models.formats.auto3dseg import input_names

    assert input_names(folder) == input_names(folder / "prostate-v1.0.1.zip") == ["T2", "ADC"]  # before loading
    model = load_model(folder, "cpu")
    assert model.name == "auto3dseg-prostate" and [i["name"] for i in model.card.inputs] == ["T2", "ADC"]
    assert model.card.license == "CC BY-SA 4.0"


@pytest.mark.parametrize("what", ["labels", "checkpoint"])
def test_zip_without_labels_or_checkpoint_is_refused(tmp_path, what):
    path = make_zip(tmp_path, "broken-v1.0.0.zip", **{what: False})
    with pytest.raises(ModelLoadError, match="labels.csv" if what == "labels" else "no checkpoint model.pt"):
        load_model(path, "cpu")


def test_checkpoint_needing_full_pickle_is_refused_and_numpy_scalars_are_read(tmp_path):
    ok = make_zip(tmp_path / "a", "numpy-v1.0.0.zip", extra={"best_metric": np.float64(0.81)})
    assert load_model(ok, "cpu").card.raw["best_metric"] == pytest.approx(0.81)
    bad = make_zip(tmp_path / "b", "code-v1.0.0.zip", extra={"history": Path("/tmp")})
    with pytest.raises(ModelLoadError, match="needs full pickle"):
        load_model(bad, "cpu")


def test_zip_with_escaping_entry_is_refused(tmp_path):
    path = make_zip(tmp_path, "evil-v1.0.0.zip")
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("../outside.txt", "x")
    with pytest.raises(ModelLoadError, match="outside"):
        load_model(path, "cpu")


# --- parity with the extension's script ---------------------------------------------------------


def test_parity_oblique_lps_ct_and_cli(tmp_path):
    from medai.cli import main

    affine = oblique_affine(spacing=(1.3, 1.1, 2.0), angles=(0.25, -0.15, 0.4), flip_x=False)
    lps = LPS_TO_RAS @ affine  # oblique, voxel axes running closest to L, P, S
    image = make_volume(tmp_path / "ct.nrrd", lps)
    model_zip = make_zip(tmp_path, "abdomen-test-v1.0.0.zip")
    reference, ours = reference_and_medai(model_zip, [image], tmp_path)
    assert len(np.unique(reference)) >= 2  # the network says something, not all background
    np.testing.assert_array_equal(ours, reference)
    out = tmp_path / "out.seg.nrrd"
    assert main(["segment", str(image), "-m", str(model_zip), "-o", str(out), "--device", "cpu"]) == 0
    np.testing.assert_array_equal(read_image(out).array, reference)


def test_parity_two_inputs_meanstd(tmp_path):
    affine = np.diag([-1.2, -1.2, 1.8, 1.0])  # LPS-stored
    t2 = make_volume(tmp_path / "t2.nrrd", affine, seed=1)
    adc = make_volume(tmp_path / "adc.nrrd", affine, seed=2, offset=(2, 0, -1))
    model_zip = make_zip(tmp_path, "prostate-test-v1.0.0.zip", in_channels=2, normalize_mode="meanstd",
                         extra_modalities={"image2": "meanstdtanh"}, resample_resolution=[1.0, 1.0, 2.0])
    reference, ours = reference_and_medai(model_zip, [t2, adc], tmp_path)
    assert len(np.unique(reference)) >= 2
    np.testing.assert_array_equal(ours, reference)


def test_parity_brats_channel_merge(tmp_path):
    affine = oblique_affine(spacing=(1.0, 1.0, 1.5), angles=(0.1, 0.0, -0.3))
    images = [make_volume(tmp_path / f"{m}.nrrd", affine, seed=n) for n, m in enumerate(("t2f", "t1c", "t1n", "t2w"))]
    model_zip = make_zip(tmp_path, "brats-test-v1.0.0.zip", in_channels=4, sigmoid=True, normalize_mode="meanstd", seed=3)
    reference, ours = reference_and_medai(model_zip, images, tmp_path)
    assert set(np.unique(reference)) <= {0, 1, 2, 3} and len(np.unique(reference)) >= 2
    np.testing.assert_array_equal(ours, reference)


def test_parity_whole_head_largest_components(tmp_path):
    affine = np.diag([-0.9, -0.9, 1.2, 1.0])
    image = make_volume(tmp_path / "head.nrrd", affine, seed=4)
    model_zip = make_zip(tmp_path, "whole-head-test-v1.0.0.zip", orientation_ras=False, resample_resolution=None, seed=5)
    reference, ours = reference_and_medai(model_zip, [image], tmp_path)
    np.testing.assert_array_equal(ours, reference)


def test_cancel_stops_between_windows(tmp_path):
    from medai.engine.progress import CancelToken, Cancelled
    from medai.engine.segment import segment

    image = make_volume(tmp_path / "ct.nrrd", np.diag([-1.0, -1.0, 1.0, 1.0]))
    model = load_model(make_zip(tmp_path, "abdomen-test-v1.0.0.zip", roi_size=[16, 16, 16], resample_resolution=None), "cpu")
    calls = []
    model.networks[0].register_forward_hook(lambda *a: calls.append(1))
    token = CancelToken()
    seen: list[str] = []

    def callback(fraction: float, stage: str) -> None:
        seen.append(stage)
        if stage == "inference" and fraction > 0.3:
            token.cancel()

    with pytest.raises(Cancelled):
        segment(model, [read_image(image)], callback, token)
    assert "inference" in seen and "postprocess" not in seen
    assert 0 < len(calls) < 30  # stopped early: the volume needs 48 windows of 16^3


def test_catalog_name_fetches_the_zip_and_loads_it(tmp_path, monkeypatch):
    """``load_model(NAME)`` for an Auto3DSeg catalog entry: fetched from its URL (here file://) and loaded."""
    served = make_zip(tmp_path / "server", "lungs-test-v2.0.1.zip")
    catalog_dir = tmp_path / "catalog"
    (catalog_dir / "models.d").mkdir(parents=True)
    (catalog_dir / "models.json").write_text(json.dumps({"default_model": "auto3dseg-lungs-test", "models": [], "samples": []}))
    entry = {"name": "auto3dseg-lungs-test", "title": "Lungs (test)", "task": "segmentation", "format": "auto3dseg", "modality": "CT",
             "version": "2.0.1", "license": "CC BY 4.0", "license_flag": None, "source": {"url": served.as_uri()},
             "inputs": [{"channel": 0, "name": "CT", "modality": "CT"}], "segments": ["Liver", "Left kidney", "Cyst in left kidney"]}
    (catalog_dir / "models.d" / "auto3dseg.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("MEDAI_CATALOG", str(catalog_dir / "models.json"))
    model = load_model("auto3dseg-lungs-test", "cpu")
    assert model.kind == "auto3dseg" and model.name == "auto3dseg-lungs-test" and model.card.title == "Lungs (test)"
    assert [lab.name for lab in model.labels] == entry["segments"]


def test_recognising_a_zip_needs_no_torch(tmp_path):
    """The panel's Import model... asks the format registry before PyTorch is installed."""
    import subprocess

    path = make_zip(tmp_path, "abdomen-test-v1.0.0.zip")
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
            "from medai.models.formats import format_for; "
            f"fmt = format_for(Path({str(path)!r})); fmt.check(Path({str(path)!r})); "
            "assert fmt.name == 'auto3dseg', fmt.name; "
            "assert [m for m in ('torch', 'monai') if m in sys.modules] == [], sys.modules.keys(); print('OK')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_script_crop_that_misses_the_body_is_reproduced_with_a_warning(tmp_path, caplog):
    """The script's crop box comes from the input as stored but crops the reoriented image: said, not silent."""
    from medai.engine.segment import segment
    from medai.models.formats.auto3dseg import crop_loss, input_transforms
    from medai.geometry import to_metatensor

    arr = np.full((20, 40, 60), -1000, np.int16)
    arr[5:15, 5:15, 5:15] = 100  # body near the first voxels of i and j
    config = {"normalize_mode": "none", "intensity_bounds": [0, 1], "orientation_ras": True, "crop_foreground": True}
    for ijk_to_ras, lost in ((np.diag([-1.0, -1.0, 1.0, 1.0]), 1000), (np.eye(4), 0)):  # LPS-stored: box mirrored; RAS: sound
        data = input_transforms(config, ["image1"], False)({"image1": to_metatensor(Volume(arr, ijk_to_ras))})
        assert crop_loss(config, data, False) == lost
    model = load_model(make_zip(tmp_path, "abdomen-test-v1.0.0.zip", roi_size=[16, 16, 16], resample_resolution=None), "cpu")
    with caplog.at_level("WARNING"):
        segment(model, [Volume(arr, np.diag([-1.0, -1.0, 1.0, 1.0]), name="offcentre")])
    assert "leaves 1000 foreground voxels of offcentre outside" in caplog.text
