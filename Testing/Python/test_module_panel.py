"""Panel helpers (Qt-free), the dependency plan, the sample loader and the installed extension layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import write_unet_card
from medai.models.loader import ModelLoadError
from medai.slicer import panel

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # MedAILib (its dependencies module imports no Qt at load time)


def test_model_choices_list_catalog_then_imported(tmp_path):
    card = write_unet_card(tmp_path / "mine")
    choices = panel.model_choices("segmentation", [str(card)])
    assert choices[0].spec == "deepbet-brain" and choices[0].sample == "mni152-t1"
    assert choices[-1].spec == str(card) and "(imported)" in choices[-1].title
    assert panel.model_choices("classification") == [] or all(c.spec != "deepbet-brain" for c in panel.model_choices("classification"))


def test_model_inputs_from_catalog_card_and_bundle(tmp_path):
    assert panel.model_inputs("deepbet-brain") == ["T1"]
    card = write_unet_card(tmp_path / "two", in_channels=2)
    assert panel.model_inputs(str(card)) == ["ch0", "ch1"]
    assert panel.model_inputs(str(card.parent)) == ["ch0", "ch1"]  # folder holding medai.json
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps(
        {"network_data_format": {"inputs": {"image": {"num_channels": 4}}}}))
    assert panel.model_inputs(str(bundle)) == [f"channel {c}" for c in range(4)]


def test_check_import_accepts_models_and_names_what_is_wrong(tmp_path):
    card = write_unet_card(tmp_path / "ok")
    assert panel.check_import(card) == str(card.resolve())
    assert panel.check_import(card.parent) == str(card.parent.resolve())
    with pytest.raises(ModelLoadError, match="no such file"):
        panel.check_import(tmp_path / "missing.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a model format MedAI reads"):
        panel.check_import(tmp_path / "empty")
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(ModelLoadError, match="not a valid zip"):
        panel.check_import(tmp_path / "bad.zip")
    (tmp_path / "lonely.ts").write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="needs a model card"):
        panel.check_import(tmp_path / "lonely.ts")
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as z:
        z.writestr("b/configs/metadata.json", "{}")
    assert panel.check_import(tmp_path / "b.zip").endswith("b.zip")


def test_device_choices_hint_and_timings():
    import torch

    devices = [d for _, d in panel.device_choices()]
    assert devices[:2] == ["auto", "cpu"] and len(devices) == 2 + torch.cuda.device_count()
    hint = panel.device_hint("deepbet-brain")
    if torch.cuda.is_available():
        assert "GiB free" in panel.device_hint("deepbet-brain", gpu_bytes=256 * 1024**2)
        assert panel.device_hint("deepbet-brain", gpu_bytes=64 * 1024**3) == ""
    else:
        assert "No CUDA GPU" in hint
    assert panel.estimated_gpu_bytes("deepbet-brain") > 256**3 * 4
    text = panel.format_timings({"load": 0.5, "inference (localize)": 1.0, "inference (segment)": 2.0,
                                 "preprocess": 0.25, "postprocess": 0.125}, "cpu", 4.0)
    assert text == "Device cpu | load 0.50 s | preprocess 0.25 s | inference 3.00 s | post-process 0.12 s | total 4.00 s"
    assert panel.format_elapsed(125.4) == "2:05"


def test_dependency_plan_never_touches_a_working_torch():
    from MedAILib.dependencies import plan_install

    assert not plan_install().needed  # this environment has torch and monai
    missing = plan_install(lambda name: None if name in ("monai", "tqdm") else object())
    assert missing.torch is False and missing.others == ["monai>=1.4", "tqdm"]
    assert "torch" not in missing.describe().split("\n", 1)[1]
    assert plan_install(lambda name: None).torch is True


def test_download_sample_loads_mni_into_the_scene(scene, mni_files):
    node = panel.load_sample_volume("mni152-t1", scene)
    assert node.GetScene() is scene and node.GetName() == "mni152-t1"
    assert node.GetImageData().GetDimensions() == (197, 233, 189)
    with pytest.raises(KeyError, match="not in the catalog"):
        panel.load_sample_volume("nope", scene)


def test_installed_layout_finds_catalog(tmp_path):
    """Copy what CMake installs into a fake extension tree and import medai from there."""
    from test_static_module import cmake_sets

    sets = cmake_sets(REPO / "CMakeLists.txt")
    root = tmp_path / "MedAI" / "lib" / "Slicer-5.9" / "qt-scripted-modules"
    for rel in sets["MEDAI_PYTHON_SCRIPTS"] + sets["MEDAI_PYTHON_RESOURCES"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    env = {k: v for k, v in os.environ.items() if k not in ("MEDAI_RESOURCES", "MEDAI_CATALOG", "PYTHONPATH")}
    env["PYTHONPATH"] = str(root)
    code = ("import medai.models.catalog as c, medai.models.card, medai.slicer.scene;"
            "print(c.resources_dir()); print(c.default_model_name()); print(medai.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    resources, default, init = out.stdout.split()
    assert Path(resources) == root / "Resources" and default == "deepbet-brain"
    assert Path(init).is_relative_to(root)


def test_classification_choices_classes_and_summary(tmp_path):
    from classify_helpers import SMALL_DENSENET_3D, write_card
    from medai.engine.classify import ClassificationResult, CaseResult

    card = write_card(tmp_path / "dense3d", SMALL_DENSENET_3D, {
        "task": "classification", "inputs": [{"name": "CT"}], "classes": ["normal", {"name": "benign"}, "malignant"],
        "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}})
    assert all(c.spec != "deepbet-brain" for c in panel.model_choices("classification", [str(card)]))
    assert panel.model_choices("classification", [str(card)])[-1].spec == str(card)
    assert panel.model_inputs(str(card)) == ["CT"]
    assert panel.model_classes(str(card)) == ["normal", "benign", "malignant"]
    assert panel.target_class_choices(str(card)) == [(panel.PREDICTED, ""), ("normal", "normal"), ("benign", "benign"),
                                                     ("malignant", "malignant")]
    assert panel.target_class_choices("") == [(panel.PREDICTED, "")]
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": {"outputs": {"pred": {
        "num_channels": 2, "channel_def": {"0": "no tumour", "1": "tumour"}}}}}))
    assert panel.model_classes(str(bundle)) == ["no tumour", "tumour"]
    assert [m for _, m in panel.EXPLAIN_METHODS] == ["gradcam", "gradcam++", "occlusion"]
    text = panel.format_timings({"load": 0.5, "ct: preprocess": 0.25, "ct: inference": 1.0,
                                 "ct: explain (Grad-CAM)": 2.0, "mr: inference": 1.0, "scene": 0.125}, "cpu")
    assert text == "Device cpu | load 0.50 s | preprocess 0.25 s | inference 2.00 s | explain 2.00 s | scene 0.12 s"
    import numpy as np

    from medai.geometry import Volume

    ref = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4), "ct")
    result = ClassificationResult("m", "classification", ["normal", "benign", "malignant"],
                                  [CaseResult("ct", ref, np.array([0.1, 0.7, 0.2]), [1])], [0.5] * 3)
    assert panel.classify_summary(result) == "ct: benign | benign 0.70, malignant 0.20, normal 0.10"
