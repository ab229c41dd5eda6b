"""More model formats and a user's 2D flow: EfficientNet-BN by card, TorchScript beside a card, a PNG radiograph via the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from classify_helpers import KERAS_PNEUMONIA_CNN, keras_pneumonia_card, write_card
from medai.engine.classify import classify
from medai.explain.gradcam import find_target_layer
from medai.geometry import Volume
from medai.io import read_image
from medai.models.loader import build_network, load_model

EFFICIENTNET_B0_2D = {"_target_": "monai.networks.nets.EfficientNetBN", "model_name": "efficientnet-b0", "pretrained": False,
                      "progress": False, "spatial_dims": 2, "in_channels": 1, "num_classes": 2}


def _radiograph(shape=(1, 50, 60), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = (rng.random(shape) * 60 + 80).astype(np.float32)
    arr[0, 10:30, 12:28] += 100.0  # one bright structure: a Grad-CAM of a calibrated net is not flat
    return Volume(arr, np.diag([0.4, 0.5, 1.0, 1.0]), "cxr")


def test_efficientnet_bn_card_classifies_and_gradcam_finds_its_layer(tmp_path):
    card = write_card(tmp_path / "effnet", EFFICIENTNET_B0_2D, {
        "task": "classification", "inputs": [{"name": "CXR"}], "classes": ["normal", "abnormal"],
        "preprocessing": {"intensity": [{"op": "zscore"}]},
        "inference": {"mode": "resize", "roi_size": [64, 64], "activation": "softmax"}}, calibrate=(4, 1, 64, 64))
    model = load_model(card, "cpu")
    net = model.networks[0]
    assert type(net).__name__ == "EfficientNetBN"
    assert find_target_layer(net) == "_conv_head"  # the last conv: 2x2 feature map at 64x64 input
    volume = _radiograph()
    result = classify(model, [volume], explain=True)
    case = result.cases[0]
    assert result.class_names == ["normal", "abnormal"] and abs(case.scores.sum() - 1) < 1e-5
    assert abs(case.scores[0] - case.scores[1]) > 1e-4, "degenerate (uncalibrated) network: all scores equal"
    assert case.predicted == [int(np.argmax(case.scores))]
    heat = case.heatmap
    assert heat is not None and heat.shape == volume.array.shape and heat.dtype == np.float32
    # fresh weights make a flat-ish but not constant map (~0.97..1); a layer with a 1x1 output (e.g. an SE conv) gives exactly one value
    assert float(heat.max()) == pytest.approx(1.0) and float(heat.max() - heat.min()) > 0.01, "Grad-CAM heatmap is constant"
    # such a flat-ish map (one hot spot over the whole image) localises nothing, and is flagged as such (medai.checks)
    assert result.warnings and all("heatmap is hot over" in w for w in result.warnings)


def _scripted_beside_card(tmp_path):
    """The Keras-style CNN saved twice: card + state_dict (eager), and TorchScript with the same card minus network/weights."""
    eager_card = keras_pneumonia_card(tmp_path / "eager", seed=3)
    net = build_network(KERAS_PNEUMONIA_CNN, "test")
    net.load_state_dict(torch.load(tmp_path / "eager" / "model.pt", weights_only=True))
    ts_dir = tmp_path / "scripted"
    ts_dir.mkdir()
    torch.jit.save(torch.jit.script(net.eval()), str(ts_dir / "model.ts"))
    raw = json.loads(eager_card.read_text())
    for key in ("network", "weights", "name"):
        raw.pop(key)
    (ts_dir / "model.json").write_text(json.dumps(raw))
    return eager_card, ts_dir / "model.ts"


def test_torchscript_scores_match_eager_and_explain_by_occlusion(tmp_path):
    eager_card, ts_path = _scripted_beside_card(tmp_path)
    eager, scripted = load_model(eager_card, "cpu"), load_model(ts_path, "cpu")
    assert scripted.kind == "torchscript" and isinstance(scripted.networks[0], torch.jit.ScriptModule)
    for seed in range(2):
        a = classify(eager, [_radiograph(seed=seed)], explain=False).cases[0]
        b = classify(scripted, [_radiograph(seed=seed)], explain=False).cases[0]
        np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5, atol=1e-6)
        assert a.predicted == b.predicted
    # scripted modules take no forward/backward hooks: no Grad-CAM, a note naming the way out, scores still there
    r = classify(scripted, [_radiograph()], explain=True, method="gradcam")
    assert r.cases[0].heatmap is None and len(r.cases[0].scores) == 2
    assert [w for w in r.warnings if "Grad-CAM is unavailable for TorchScript" in w and "occlusion" in w]
    # occlusion works on it, and gives the eager model's map
    occ_ts = classify(scripted, [_radiograph()], explain=True, method="occlusion").cases[0].heatmap
    occ_eager = classify(eager, [_radiograph()], explain=True, method="occlusion").cases[0].heatmap
    assert occ_ts.shape == _radiograph().array.shape and float(occ_ts.std()) > 0
    np.testing.assert_allclose(occ_ts, occ_eager, atol=1e-4)


def _chest_xray_png(path, width=120, height=100):
    """A synthetic chest-radiograph-like grey PNG: bright body, two dark lung fields, a spine, rib arcs."""
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width), 40.0)
    img[((xx - width / 2) / (0.48 * width)) ** 2 + ((yy - height / 2) / (0.55 * height)) ** 2 < 1] = 170.0
    for cx in (0.3 * width, 0.7 * width):
        img[((xx - cx) / (0.15 * width)) ** 2 + ((yy - 0.5 * height) / (0.33 * height)) ** 2 < 1] = 60.0
    img[:, int(0.47 * width):int(0.53 * width)] = 220.0
    for r in range(6):
        img[np.abs(yy - (0.25 + 0.1 * r) * height - 0.002 * (xx - width / 2) ** 2) < 1.2] += 35.0
    img += np.random.default_rng(0).normal(0, 5, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def test_png_radiograph_through_the_cli(tmp_path):
    from medai.cli import main

    png = _chest_xray_png(tmp_path / "chest.png")
    volume = read_image(png)  # 2D becomes a one-slice volume
    assert volume.array.shape == (1, 100, 120) and volume.num_components == 1
    card = keras_pneumonia_card(tmp_path / "pneumonia")
    out, heat_path = tmp_path / "out.csv", tmp_path / "heat.nrrd"
    assert main(["classify", str(png), "--model", str(card), "-o", str(out), "--explain", str(heat_path)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 1 and rows[0]["image"] == "chest.png" and rows[0]["predicted"] in ("normal", "pneumonia")
    p_normal, p_pneumonia = float(rows[0]["normal"]), float(rows[0]["pneumonia"])
    assert p_normal + p_pneumonia == pytest.approx(1.0) and (rows[0]["predicted"] == "pneumonia") == (p_pneumonia >= 0.5)
    heat = read_image(heat_path)
    assert heat.array.shape == volume.array.shape  # the PNG's 120 x 100 pixels, one slice
    np.testing.assert_allclose(heat.ijk_to_ras, volume.ijk_to_ras, atol=1e-6)
    # 0..1 on the 64x64 network input; resized to the PNG's grid the peak may be smoothed a little
    assert heat.array.dtype == np.float32 and 0.0 <= float(heat.array.min()) and 0.9 < float(heat.array.max()) <= 1.0 + 1e-6
    # one sigmoid output for two classes: either class can be explained (class 1 used to index past the output)
    for cls in ("pneumonia", "normal"):
        path = tmp_path / f"heat_{cls}.nrrd"
        assert main(["classify", str(png), "--model", str(card), "-o", str(out), "--explain", str(path), "--target-class", cls]) == 0
        assert read_image(path).array.shape == volume.array.shape
    np.testing.assert_array_equal(read_image(tmp_path / f"heat_{rows[0]['predicted']}.nrrd").array, heat.array)  # default: predicted
    assert not np.allclose(read_image(tmp_path / "heat_pneumonia.nrrd").array, read_image(tmp_path / "heat_normal.nrrd").array)


def test_one_output_onnx_with_fixed_batch_explains_both_classes_by_occlusion(tmp_path):
    eager_card = keras_pneumonia_card(tmp_path / "eager", seed=3)
    net = build_network(KERAS_PNEUMONIA_CNN, "test")
    net.load_state_dict(torch.load(tmp_path / "eager" / "model.pt", weights_only=True))
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    torch.onnx.export(net.eval(), (torch.zeros(1, 1, 64, 64),), str(onnx_dir / "model.onnx"), dynamo=False,
                      input_names=["image"], output_names=["logit"])  # batch fixed at 1: occlusion must go one by one
    raw = json.loads(eager_card.read_text())
    for key in ("network", "weights", "name"):
        raw.pop(key)
    (onnx_dir / "model.json").write_text(json.dumps(raw))
    model, eager = load_model(onnx_dir / "model.onnx", "cpu"), load_model(eager_card, "cpu")
    assert model.networks[0].input_shape[0] == 1
    for cls in ("normal", "pneumonia"):
        got = classify(model, [_radiograph()], explain=True, method="occlusion", target_class=cls).cases[0]
        want = classify(eager, [_radiograph()], explain=True, method="occlusion", target_class=cls).cases[0]
        assert got.heatmap_class == ["normal", "pneumonia"].index(cls) and got.heatmap.shape == _radiograph().array.shape
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.heatmap, want.heatmap, atol=1e-3)
