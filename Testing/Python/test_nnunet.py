"""nnU-Net v2 result folders through nnunetv2's own predictor, with a tiny folder made here (nnunet_helpers)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("nnUNet_def_n_proc", "1")  # nnU-Net's torch thread count; read when nnunetv2 is imported

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, oblique_affine
from medai.engine.progress import CancelToken, Cancelled
from medai.engine.segment import segment
from medai.geometry import Volume
from medai.io import read_image, write_volume
from medai.models.card import ModelLoadError
from medai.models.formats import format_for
from medai.models.formats import nnunet as nn_format

HAVE_NNUNET = importlib.util.find_spec("nnunetv2") is not None
needs_nnunet = pytest.mark.skipif(not HAVE_NNUNET, reason="nnunetv2 not installed: pip install --no-deps -r requirements-nnunet.txt")


def blob_image(shape=(14, 22, 20), seed=0) -> np.ndarray:
    """Smooth structure plus noise, so that the random network's argmax varies over the image."""
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    rng = np.random.default_rng(seed)
    return (3 * np.sin(3 * i) * np.cos(2 * j) + 2 * k + 0.3 * rng.normal(size=shape)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if not HAVE_NNUNET:
        pytest.skip("nnunetv2 not installed: pip install --no-deps -r requirements-nnunet.txt")
    from nnunet_helpers import make_result_folder

    root = tmp_path_factory.mktemp("nnunet")
    plain = make_result_folder(root / "plain", folds=(0, 1))
    regions = make_result_folder(root / "regions", labels={"background": 0, "whole": [1, 2], "core": [2]}, regions=[1, 2])
    reorient = make_result_folder(root / "reorient", reader="NibabelIOWithReorient", transpose=(2, 0, 1), seed=3)
    two = make_result_folder(root / "two", channels=("T1", "T2"), seed=5)
    return {"plain": plain, "regions": regions, "reorient": reorient, "two": two, "root": root}


@pytest.fixture
def trust(monkeypatch, tmp_path) -> Path:
    """A fresh MEDAI_HOME (cache, remembered trust decisions); the tests trust their own models with trust=True."""
    monkeypatch.setenv("MEDAI_HOME", str(tmp_path / "home"))
    return tmp_path


def nnunet_reference(folder: Path, image: Path, out_dir: Path, folds, mirroring: bool) -> np.ndarray:
    """nnU-Net's own prediction for a file (predict_from_files_sequential: predict_from_files without worker processes)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=mirroring, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), folds, "checkpoint_final.pth")
    predictor.predict_from_files_sequential([[str(image)]], [str(out_dir / "case")], False, True, None)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / "case.nii.gz")))


@needs_nnunet
@pytest.mark.parametrize("case", ["lps_axial_one_fold", "oblique_two_folds_mirrored"])
def test_result_equals_nnunet_predict_from_files(models, trust, tmp_path, case):
    from medai.models.loader import load_model

    oblique = case.startswith("oblique")
    affine = oblique_affine(spacing=(1.4, 1.6, 2.2)) if oblique else np.diag([-1.5, -1.7, 2.3, 1.0])
    suffix = ".nrrd" if oblique else ".nii.gz"
    voxels = blob_image() if oblique else (100 * blob_image()).astype(np.int16)  # CT-like integers: cast as nnU-Net does
    image = write_volume(Volume(voxels, affine, "case"), tmp_path / f"case_0000{suffix}")
    folds = [0, 1] if oblique else [0]
    model = load_model(models["plain"].parent, "cpu", trust=True)
    nn_format.configure(model, folds=folds, use_mirroring=oblique)
    volume = read_image(image)
    result = segment(model, [volume])
    expected = nnunet_reference(models["plain"], image, tmp_path, folds, oblique)
    assert result.layers[0].shape == volume.array.shape
    assert np.array_equal(result.reference.ijk_to_ras, volume.ijk_to_ras)
    assert len(np.unique(expected)) > 1, "the test network must give more than one label"
    np.testing.assert_array_equal(result.layers[0], expected)
    assert [lab.name for lab in result.labels] == ["left", "right"]


@needs_nnunet
def test_two_input_channels_in_order(models, trust, tmp_path):
    """A two-channel model: volumes in channel order, as nnU-Net's case_0000/case_0001 files."""
    from medai.models.loader import load_model

    affine = np.diag([-1.5, -1.7, 2.3, 1.0])
    files = [write_volume(Volume(blob_image(seed=s), affine, "case"), tmp_path / f"case_000{s}.nii.gz") for s in (0, 1)]
    model = load_model(models["two"], "cpu", trust=True)
    assert [i["name"] for i in model.card.inputs] == ["T1", "T2"]
    nn_format.configure(model, use_mirroring=False)
    result = segment(model, [read_image(f) for f in files])
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    import torch

    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(models["two"]), [0], "checkpoint_final.pth")
    predictor.predict_from_files_sequential([[str(f) for f in files]], [str(tmp_path / "case")], False, True, None)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case.nii.gz")))
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(result.layers[0], expected)
    swapped = segment(model, [read_image(f) for f in reversed(files)])
    assert not np.array_equal(swapped.layers[0], expected)
    with pytest.raises(ModelLoadError, match="takes 2 input volume"):
        segment(model, [read_image(files[0])])


@needs_nnunet
def test_nibabel_reorient_reader_and_plans_transpose(models, trust, tmp_path):
    """Plans with NibabelIOWithReorient (voxels turned to the closest RAS first) and a transpose_forward."""
    from medai.models.loader import load_model

    affine = oblique_affine(spacing=(1.4, 1.6, 2.2))  # LPS-ish, rotated, flipped: far from RAS voxel order
    image = write_volume(Volume(blob_image(seed=2), affine, "case"), tmp_path / "case_0000.nii.gz")
    model = load_model(models["reorient"], "cpu", trust=True)
    nn_format.configure(model, use_mirroring=False)
    volume = read_image(image)
    result = segment(model, [volume])
    expected = nnunet_reference(models["reorient"], image, tmp_path, [0], False)
    assert result.layers[0].shape == volume.array.shape
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(result.layers[0], expected)


@needs_nnunet
def test_region_based_labels_one_layer_per_region(models, trust, tmp_path):
    from medai.models.loader import load_model

    image = write_volume(Volume(blob_image(seed=1), np.diag([-1.5, -1.7, 2.3, 1.0]), "case"), tmp_path / "case_0000.nii.gz")
    model = load_model(models["regions"], "cpu", trust=True)
    nn_format.configure(model, use_mirroring=False)
    result = segment(model, [read_image(image)])
    assert [(lab.name, lab.layer, lab.value) for lab in result.labels] == [("whole", 0, 1), ("core", 1, 1)]
    expected = nnunet_reference(models["regions"], image, tmp_path, [0], False)
    merged = np.zeros_like(expected)
    for layer, value in zip(result.layers, [1, 2]):  # regions_class_order: later regions overwrite earlier ones
        merged[layer == 1] = value
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(merged, expected)


@needs_nnunet
def test_untrusted_checkpoint_is_refused_until_trusted(models, trust):
    from medai.models import trust as trust_rules
    from medai.models.loader import load_model
    from medai.models.trust import ModelTrustError

    plain = models["plain"]
    with pytest.raises(ModelTrustError, match="full pickle") as err:
        load_model(plain, "cpu")
    assert "--trust" in str(err.value) and "fold_0/checkpoint_final.pth" in str(err.value)
    assert "full pickle" in trust_rules.untrusted_code(plain)[0]  # what Slicer asks about before a run
    assert "full pickle" in trust_rules.untrusted_code(plain.parent)[0]
    with pytest.raises(ModelTrustError):  # outside load_model: refused unless the caller trusts it in code
        nn_format.FORMAT.load(plain, __import__("torch").device("cpu"))
    assert nn_format.FORMAT.load(plain, __import__("torch").device("cpu"), {"trusted": True}).kind == "nnunet"
    (plain / nn_format.OPTIONS_FILE).write_text('{"trusted": true}')
    try:
        with pytest.raises(ModelLoadError, match="cannot be set by the model's own folder"):
            load_model(plain, "cpu", trust=True)
    finally:
        (plain / nn_format.OPTIONS_FILE).unlink()
    trust_rules.trust_model(plain)  # remembered, as Slicer does after asking
    assert trust_rules.untrusted_code(plain) == []
    assert load_model(plain, "cpu").kind == "nnunet"
    copy = trust / "copy" / plain.name
    shutil.copytree(plain, copy)
    trust_rules.trust_model(copy)
    assert trust_rules.untrusted_code(copy) == []
    with open(copy / "fold_1" / "checkpoint_final.pth", "ab") as fh:  # a swapped checkpoint is new code: asked again
        fh.write(b"\0")
    assert trust_rules.untrusted_code(copy)


@needs_nnunet
def test_recognised_as_folder_dataset_folder_and_zip(models, trust, tmp_path):
    plain = models["plain"]
    archive = tmp_path / "Dataset999_Tiny.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in plain.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(plain.parent.parent).as_posix())
    for path in (plain, plain.parent, archive):
        assert format_for(path).name == "nnunet"
    assert nn_format.result_folder(plain.parent) == plain
    assert [nn_format.input_names(p) for p in (plain, plain.parent, archive, tmp_path)] == [["T1"], ["T1"], ["T1"], []]
    extracted = nn_format.result_folder(archive)
    assert extracted.name == plain.name and (extracted / "fold_1" / "checkpoint_final.pth").read_bytes() == \
        (plain / "fold_1" / "checkpoint_final.pth").read_bytes()
    names = [f"D/{c}/{n}" for c in ("T__P__2d", "T__P__3d_fullres") for n in ("dataset.json", "plans.json", "fold_all/checkpoint_final.pth")]
    assert nn_format.result_dirs(names) == ["D/T__P__2d", "D/T__P__3d_fullres"]
    assert nn_format.result_dirs(names[1:]) == ["D/T__P__3d_fullres"]  # 2d lacks dataset.json
    with pytest.raises(ModelLoadError, match="2 nnU-Net result folders"):
        nn_format._one(nn_format.result_dirs(names), tmp_path)


@needs_nnunet
def test_cancel_between_tiles_and_the_model_runs_again(models, trust):
    from medai.models.loader import load_model

    model = load_model(models["plain"], "cpu", trust=True)
    nn_format.configure(model, folds=[0], use_mirroring=False)
    volume = Volume(blob_image(), np.diag([-1.5, -1.7, 2.3, 1.0]))
    token, seen = CancelToken(), []

    def callback(fraction, stage):
        seen.append(stage)
        if stage == "inference" and fraction > 0.1:
            token.cancel()

    with pytest.raises(Cancelled):
        segment(model, [volume], callback, token)
    assert "postprocessing" not in seen
    assert "_internal_maybe_mirror_and_predict" not in vars(nn_format.state_of(model).predictor)
    assert segment(model, [volume]).layers[0].shape == volume.array.shape


@needs_nnunet
def test_cli_segment_with_an_nnunet_folder(models, trust, tmp_path, capsys):
    from medai.cli import main

    image = write_volume(Volume(blob_image(), np.diag([-1.5, -1.7, 2.3, 1.0]), "case"), tmp_path / "case.nii.gz")
    (models["plain"] / nn_format.OPTIONS_FILE).write_text('{"folds": [0], "use_mirroring": false}')
    try:
        assert main(["segment", str(image), "-m", str(models["plain"]), "-o", str(tmp_path / "out.seg.nrrd"), "--device", "cpu", "--trust"]) == 0
    finally:
        (models["plain"] / nn_format.OPTIONS_FILE).unlink()
    out = capsys.readouterr().out
    assert "left" in out and (tmp_path / "out.seg.nrrd").exists()
    assert "found the following folds" not in out and "perform_everything_on_device" not in out  # nnU-Net's prints: logged


@needs_nnunet
def test_a_missing_fold_is_a_clear_error(models, trust):
    from medai.models.loader import load_model

    model = load_model(models["plain"], "cpu", trust=True)
    with pytest.raises(ModelLoadError, match="check the folds option"):
        nn_format.configure(model, folds=[3])
    with pytest.raises(ModelLoadError, match="unknown nnU-Net option"):
        nn_format.configure(model, fold=0)


def test_missing_nnunetv2_says_how_to_install(tmp_path):
    """Run in a subprocess with nnunetv2 blocked; recognition works without it (and without importing torch)."""
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "checkpoint_final.pth").write_bytes(b"not read")
    (tmp_path / "plans.json").write_text("{}")
    (tmp_path / "dataset.json").write_text('{"labels": {"background": 0, "a": 1}, "channel_names": {"0": "CT"}}')
    code = (
        "import sys; sys.modules['nnunetv2'] = None\n"
        "from medai.models.formats import format_for\n"
        f"fmt = format_for({str(tmp_path)!r}); assert fmt.name == 'nnunet', fmt.name\n"
        "assert 'torch' not in sys.modules, 'recognition imported torch'\n"
        "from medai.models.loader import load_model\n"
        f"load_model({str(tmp_path)!r}, 'cpu')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode != 0
    assert "nnU-Net v2 models need the nnunetv2 package" in run.stderr, run.stderr[-2000:]
    assert "pip install --no-deps nnunetv2==2.8.1" in run.stderr


def test_pins_match_requirements_file():
    listed = [line.strip() for line in (REPO / "requirements-nnunet.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert listed == list(nn_format.NNUNET_REQUIREMENTS)


@pytest.mark.parametrize("packaging", [True, False])
def test_slicer_installs_the_nnunet_set_with_no_deps_and_never_torch(packaging):
    from slicer_python import slicer_python
    from test_module_dependencies import confirm, record

    with slicer_python(packaging=packaging) as slicer:
        from MedAILib import dependencies as deps

        plan = deps.plan_install(find_spec=lambda m: None if m == "nnunetv2" else object(), optional=("nnunet",))
        assert not plan.torch and plan.others == [] and plan.no_deps == list(nn_format.NNUNET_REQUIREMENTS)
        assert not deps.plan_install(find_spec=lambda m: object(), optional=("nnunet",)).needed
        calls, asked = [], []
        if packaging:
            sys.modules["slicer.packaging"].pip_install = record(calls, "packaging.pip_install")
        slicer.util.pip_install = record(calls, "util.pip_install")
        slicer.util.confirmOkCancelDisplay = confirm(asked)
        deps.ensure_dependencies(plan=plan)
        assert calls == [("util.pip_install", ["--no-deps", *nn_format.NNUNET_REQUIREMENTS], {})]
        assert "nnunetv2==2.8.1" in asked[0]
        assert not any(r.split("==")[0].lower() in ("torch", "simpleitk", "numpy") for r in calls[0][1][1:])


def test_the_panel_asks_for_the_nnunet_set_only_for_nnunet_models(tmp_path):
    from slicer_python import slicer_python

    (tmp_path / "fold_all").mkdir()
    (tmp_path / "fold_all" / "checkpoint_final.pth").write_bytes(b"")
    for name in ("plans.json", "dataset.json"):
        (tmp_path / name).write_text("{}")
    with slicer_python(packaging=True):
        from MedAILib import dependencies as deps

        assert deps.optional_sets_for(str(tmp_path)) == ("nnunet",)
        assert deps.optional_sets_for(str(tmp_path / "fold_all")) == ()
        assert deps.optional_sets_for(None) == () and deps.optional_sets_for(str(tmp_path / "missing")) == ()
