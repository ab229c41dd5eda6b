"""Model kinds and task kinds: ONNX vs PyTorch parity, multi-label, regression, MedicalNet partial loads, bundles, CLI."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from classify_helpers import KERAS_PNEUMONIA_CNN, SMALL_DENSENET_3D, write_card
from medai.engine.classify import classify
from medai.geometry import Volume
from medai.io import read_image, write_volume
from medai.models.loader import ModelLoadError, build_network, load_model

CLASSES = ["normal", "benign", "malignant"]


def _cxr(shape=(1, 90, 75), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume((rng.random(shape) * 255).astype(np.float32), np.diag([0.4, 0.4, 1.0, 1.0]), "cxr")


def _ct(seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(size=(20, 24, 28)).astype(np.float32), np.diag([1.5, 1.2, 1.0, 1.0]), "ct")


def test_onnx_matches_pytorch(tmp_path):
    card = {"task": "classification", "inputs": [{"name": "CT"}], "classes": CLASSES,
            "preprocessing": {"orientation": "RAS", "intensity": [{"op": "zscore"}]},
            "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}}
    torch_card = write_card(tmp_path / "torch", SMALL_DENSENET_3D, card)
    net = build_network(SMALL_DENSENET_3D, "test")
    net.load_state_dict(torch.load(tmp_path / "torch" / "model.pt", weights_only=True))
    net.eval()
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    torch.onnx.export(net, (torch.zeros(1, 1, 32, 32, 32),), str(onnx_dir / "model.onnx"), dynamo=False,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    (onnx_dir / "model.json").write_text(json.dumps(card))
    pt = load_model(torch_card, "cpu")
    ox = load_model(onnx_dir / "model.onnx", "cpu")
    assert ox.kind == "onnx" and ox.networks[0].providers == ["CPUExecutionProvider"]
    for seed in range(2):
        a = classify(pt, [_ct(seed)], explain=False).cases[0]
        b = classify(ox, [_ct(seed)], explain=False).cases[0]
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-5)
        assert a.predicted == b.predicted
    # Grad-CAM is unavailable for ONNX: scores still come, with a clear note; occlusion explains
    r = classify(ox, [_ct()], explain=True, method="gradcam")
    assert r.cases[0].heatmap is None and any("Grad-CAM is unavailable for ONNX" in w for w in r.warnings)
    r = classify(ox, [_ct()], explain=True, method="occlusion")
    assert r.cases[0].heatmap is not None and r.cases[0].heatmap.shape == _ct().array.shape


def test_multilabel_thresholds(tmp_path):
    network = dict(KERAS_PNEUMONIA_CNN, classes=3)
    card = write_card(tmp_path / "ml", network, {
        "task": "multilabel", "inputs": [{"name": "CXR"}],
        "classes": [{"name": "effusion", "threshold": 0.0}, {"name": "nodule", "threshold": 1.01}, "edema"],
        "preprocessing": {"intensity": [{"op": "scale_range", "a_min": 0, "a_max": 255}]},
        "inference": {"mode": "resize", "roi_size": [64, 64], "activation": "sigmoid", "threshold": 0.5}})
    r = classify(load_model(card, "cpu"), [_cxr()], explain=True)
    case = r.cases[0]
    assert r.task == "multilabel" and r.thresholds == [0.0, 1.01, 0.5]
    assert np.all((case.scores > 0) & (case.scores < 1))
    assert 0 in case.predicted and 1 not in case.predicted
    assert (2 in case.predicted) == (case.scores[2] >= 0.5)
    assert case.heatmap.shape == (1, 90, 75)


def test_regression_with_unit(tmp_path):
    network = dict(KERAS_PNEUMONIA_CNN)
    card = write_card(tmp_path / "age", network, {
        "task": "regression", "unit": "years", "inputs": [{"name": "CXR"}], "classes": ["bone age"],
        "preprocessing": {"intensity": [{"op": "affine", "scale": 0.01}]},
        "inference": {"mode": "resize", "roi_size": [64, 64]}})
    model = load_model(card, "cpu")
    volume = _cxr()
    r = classify(model, [volume], explain=False)
    x = torch.nn.functional.interpolate(torch.from_numpy(volume.array[0].T.copy())[None, None], size=(64, 64), mode="bilinear") * 0.01
    with torch.no_grad():
        expected = float(model.networks[0](x)[0, 0])
    assert r.unit == "years" and r.cases[0].predicted == []
    assert r.cases[0].scores[0] == pytest.approx(expected, rel=1e-5)
    assert r.rows()[0]["bone age (years)"] == pytest.approx(expected, rel=1e-5)


def test_medicalnet_checkpoint_needs_partial_policy(tmp_path):
    from monai.networks.nets import resnet10

    network = {"_target_": "monai.networks.nets.resnet10", "spatial_dims": 3, "n_input_channels": 1, "num_classes": 2}
    torch.manual_seed(1)
    backbone = resnet10(spatial_dims=3, n_input_channels=1, num_classes=2)
    state = {f"module.{k}": v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    state["module.conv_seg.0.weight"] = torch.zeros(4, 512, 1, 1, 1)  # MedicalNet's segmentation head
    folder = tmp_path / "medicalnet"
    folder.mkdir()
    torch.save({"state_dict": state}, folder / "resnet_10.pth")
    card = {"name": "medicalnet", "task": "classification", "network": network, "weights": "resnet_10.pth",
            "inputs": [{"name": "CT"}], "classes": ["no", "yes"],
            "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}}
    (folder / "medai.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="strict_weights"):
        load_model(folder / "medai.json", "cpu")
    card["strict_weights"] = False
    (folder / "partial.json").write_text(json.dumps(card))
    model = load_model(folder / "partial.json", "cpu")
    torch.testing.assert_close(model.networks[0].conv1.weight, backbone.conv1.weight)
    assert any("fc" in n and "conv_seg" in n for n in model.notes)
    r = classify(model, [_ct()], explain=True)
    assert r.cases[0].heatmap is not None and any("partial load" in w for w in r.warnings)


def _bundle_with_fresh_weights(model_zoo, tmp_path, name):
    from monai.bundle import ConfigParser

    folder = tmp_path / name
    shutil.copytree(model_zoo / name, folder)
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    if parser["network_def"].get("pretrained"):
        parser["network_def"]["pretrained"] = False
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    (folder / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def test_bundle_endoscopic_inbody(model_zoo, tmp_path):
    folder = _bundle_with_fresh_weights(model_zoo, tmp_path, "endoscopic_inbody_classification")
    rgb = Volume((np.random.default_rng(0).random((1, 150, 180, 3)) * 255).astype(np.float32), np.eye(4), "frame")
    r = classify(load_model(folder, "cpu", trust=True), [rgb], explain=True)
    assert r.class_names == ["in body", "out body"]
    assert abs(r.cases[0].scores.sum() - 1) < 1e-5
    assert r.cases[0].heatmap.shape == (1, 150, 180)


def test_bundle_pathology_nuclei_with_mask_channel(model_zoo, tmp_path):
    folder = _bundle_with_fresh_weights(model_zoo, tmp_path, "pathology_nuclei_classification")
    rng = np.random.default_rng(0)
    rgb = Volume((rng.random((1, 128, 128, 3)) * 255).astype(np.float32), np.eye(4), "patch")
    mask = np.zeros((1, 128, 128), np.float32)
    mask[0, 50:70, 60:75] = 1
    model = load_model(folder, "cpu", trust=True)
    r = classify(model, [rgb, Volume(mask, np.eye(4), "nucleus")], explain=False)
    assert r.class_names == ["Other", "Inflammatory", "Epithelial", "Spindle-Shaped"]
    assert abs(r.cases[0].scores.sum() - 1) < 1e-5
    with pytest.raises(ValueError, match="expects 4 input channel"):
        classify(model, [rgb], explain=False)


def test_bundle_breast_density_needs_torchvision(model_zoo, tmp_path):
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # the PyPI wheel is a CUDA build: its ops fail to load next to a CPU torch
        pytest.skip(f"breast_density_classification needs a working torchvision ({type(exc).__name__}: {str(exc)[:80]})")
    folder = _bundle_with_fresh_weights(model_zoo, tmp_path, "breast_density_classification")
    grey = Volume((np.random.default_rng(0).random((1, 320, 300)) * 255).astype(np.float32), np.eye(4), "mammo")
    r = classify(load_model(folder, "cpu", trust=True), [grey], explain=False)
    assert r.class_names == ["A", "B", "C", "D"] and len(r.cases[0].scores) == 4


def test_cli_classify_writes_csv_and_heatmap(tmp_path):
    from medai.cli import main

    card = write_card(tmp_path / "dense3d", SMALL_DENSENET_3D, {
        "task": "classification", "inputs": [{"name": "CT"}], "classes": CLASSES,
        "preprocessing": {"orientation": "RAS", "intensity": [{"op": "zscore"}]},
        "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}})
    images = []
    for seed in range(2):
        vol = _ct(seed)
        vol.ijk_to_ras[:3, 3] = [10.0 * seed, -5.0, 3.0]
        images.append(write_volume(vol, tmp_path / f"ct{seed}.nii.gz"))
    mask = np.zeros(_ct().array.shape, np.uint8)
    mask[5:12, 6:14, 8:18] = 1
    mask_path = write_volume(_ct(), tmp_path / "mask.nii.gz", mask)
    out = tmp_path / "scores.csv"
    rc = main(["classify", *map(str, images), "--model", str(card), "-o", str(out), "--explain", str(tmp_path / "heat.nii.gz"),
               "--region", str(mask_path), "--findings", str(tmp_path / "findings.csv")])
    assert rc == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["image"] for r in rows] == ["ct0", "ct1"] and set(CLASSES) <= set(rows[0])
    assert all(r["predicted"] in CLASSES for r in rows)
    for seed in range(2):
        heat = read_image(tmp_path / f"heat_ct{seed}.nii.gz")
        src = read_image(images[seed])
        assert heat.array.shape == src.array.shape
        np.testing.assert_allclose(heat.ijk_to_ras, src.ijk_to_ras, atol=1e-4)
    assert main(["classify", str(images[0]), "--model", str(card), "-o", str(tmp_path / "x.txt")]) == 1
