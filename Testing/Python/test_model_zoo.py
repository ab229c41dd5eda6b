"""The real MONAI model-zoo segmentation bundles (configs from ../shared, fresh weights) load and run in memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import oblique_affine
from medai.engine.segment import segment
from medai.geometry import Volume
from medai.models.formats.bundle import parse_network_def
from medai.models.loader import load_model

SEGMENTATION_BUNDLES = {
    # name: (input channels, voxel spacing of the test volume)
    "spleen_ct_segmentation": (1, (3.0, 3.0, 4.0)),
    "prostate_mri_anatomy": (1, (2.0, 2.0, 2.0)),
    "wholeBody_ct_segmentation": (1, (4.0, 4.0, 4.0)),
    "swin_unetr_btcv_segmentation": (1, (3.0, 3.0, 4.0)),
    "brats_mri_segmentation": (4, (1.0, 1.0, 1.0)),
}


def bundle_with_fresh_weights(src: Path, dest: Path) -> Path:
    """Copy a bundle's configs and save its own network_def's freshly initialised state_dict as models/model.pt."""
    from monai.bundle import ConfigParser

    shutil.copytree(src, dest)
    parser = ConfigParser()
    parser.read_config(str(dest / "configs" / "inference.json"))
    torch.manual_seed(0)
    net = parse_network_def(parser)
    (dest / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), dest / "models" / "model.pt")
    return dest


@pytest.mark.parametrize("name", sorted(SEGMENTATION_BUNDLES))
def test_zoo_bundle_runs_on_the_input_grid_with_its_label_names(model_zoo, tmp_path, name):
    channels, spacing = SEGMENTATION_BUNDLES[name]
    folder = bundle_with_fresh_weights(model_zoo / name, tmp_path / name)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    model = load_model(folder, "cpu", trust=True)
    expected_names = [v for k, v in meta["network_data_format"]["outputs"]["pred"]["channel_def"].items() if v.lower() != "background"]
    assert [lab.name for lab in model.labels][: len(expected_names)] == expected_names[: len(model.labels)]
    rng = np.random.default_rng(0)
    shape = (18, 20, 22) if channels == 1 else (24, 26, 28)
    arr = rng.normal(100, 30, size=shape + ((channels,) if channels > 1 else ())).astype(np.float32)
    affine = oblique_affine(spacing=spacing, angles=(0.2, 0.1, 0.3))
    vol = Volume(arr, affine, name=name)
    result = segment(model, [vol])
    assert all(layer.shape == shape for layer in result.layers)
    assert result.reference is vol
    values = np.unique(np.concatenate([np.unique(layer) for layer in result.layers]))
    assert values.min() >= 0
    if len(result.layers) == 1:
        assert set(values[values > 0].tolist()) <= {lab.value for lab in result.labels}


def test_bundle_preprocessing_and_invert_keep_world_positions(model_zoo, tmp_path):
    """The spleen bundle's own Orientation/Spacing/ScaleIntensityRange/Invertd, with a threshold network.

    A 1x1x1 conv labels voxels whose scaled intensity is above 0.5: the bright cube must come back
    at the same place on an oblique, anisotropic grid after the bundle resampled it to 1.5x1.5x2 mm.
    """
    folder = tmp_path / "spleen_threshold"
    shutil.copytree(model_zoo / "spleen_ct_segmentation", folder)
    cfg = json.loads((folder / "configs" / "inference.json").read_text())
    cfg["network_def"] = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}
    (folder / "configs" / "inference.json").write_text(json.dumps(cfg))
    conv = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1) * 10
        conv.bias[:] = torch.tensor([5.0, -5.0])
    (folder / "models").mkdir()
    torch.save(conv.state_dict(), folder / "models" / "model.pt")
    arr = np.full((30, 34, 38), -1000, dtype=np.int16)
    arr[8:20, 10:24, 12:30] = 200
    vol = Volume(arr, oblique_affine(spacing=(1.1, 0.9, 2.3)), name="ct")
    result = segment(load_model(folder, "cpu", trust=True), [vol])
    got, truth = result.layers[0] == 1, arr > 0
    dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
    assert dice > 0.85, dice


def test_bundle_that_adds_its_own_channel_axis_runs_like_the_original(model_zoo, tmp_path):
    """renalStructures_UNEST writes EnsureChannelFirstd(channel_dim="no_channel"): on an image that arrives
    channel-first in memory that would add a second channel axis; MedAI removes the transform, as LoadImage is."""
    from medai.engine.segment import segment
    from medai.geometry import Volume

    plain = bundle_with_fresh_weights(model_zoo / "spleen_ct_segmentation", tmp_path / "plain")
    forced = bundle_with_fresh_weights(model_zoo / "spleen_ct_segmentation", tmp_path / "forced")
    config = json.loads((forced / "configs" / "inference.json").read_text())
    steps = config["preprocessing"]["transforms"]
    ensure = [t for t in steps if str(t.get("_target_", "")).endswith("EnsureChannelFirstd")]
    assert ensure, "the spleen config has an EnsureChannelFirstd to change"
    for t in ensure:
        t["channel_dim"] = "no_channel"
    (forced / "configs" / "inference.json").write_text(json.dumps(config))
    arr = np.random.default_rng(0).normal(100, 30, (18, 20, 22)).astype(np.float32)
    volume = Volume(arr, oblique_affine(spacing=(1.5, 1.5, 2.0)), "ct")
    a = segment(load_model(plain, "cpu", trust=True), [volume])
    b = segment(load_model(forced, "cpu", trust=True), [volume])
    assert a.layers[0].shape == arr.shape and np.array_equal(a.layers[0], b.layers[0])
