"""A bundle that loads several images under its own keys (as renalStructures_CECT loads its three phases).

The bundle is written here (our own config of MONAI transforms, shaped like that bundle's: per-key
loading, orientation and spacing, then concatenation into ``image``; the ``label`` it loads is never
used), so CI runs it without the third-party configs. MedAI's labels must equal those of the same
config run by MONAI itself from the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medai.engine.segment import segment
from medai.geometry import GeometryError, Volume
from medai.io import read_image, write_volume
from medai.models.loader import load_model

KEYS = ["arterial", "venous", "delayed"]


def _config() -> dict:
    per_key = {"keys": KEYS}
    return {
        "bundle_root": ".",
        "image_key": "image",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 3, "out_channels": 3,
                        "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": [*KEYS, "label"], "image_only": False},
            {"_target_": "EnsureChannelFirstd", **per_key},
            {"_target_": "Orientationd", **per_key, "axcodes": "LPS"},
            {"_target_": "Spacingd", **per_key, "pixdim": [2.0, 2.0, 2.5], "mode": "bilinear"},
            {"_target_": "ConcatItemsd", "keys": KEYS, "name": "image", "dim": 0},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -100, "a_max": 300, "b_min": 0.0, "b_max": 1.0, "clip": True},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": KEYS[0],
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]},
    }


def _bundle(folder: Path) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    meta = {"name": "three-phase test bundle", "version": "0.1.0", "task": "segmentation",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "num_channels": 3, "modality": "CT", "spatial_shape": [16, 16, 16]}},
                "outputs": {"pred": {"type": "image", "num_channels": 3,
                                     "channel_def": {"0": "background", "1": "cortex", "2": "medulla"}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    config = _config()
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "models" / "model.pt")
    return folder


def _phase_files(tmp_path: Path) -> list[Path]:
    """Three phases on one LPS-stored, anisotropic grid (as a CT series gives them), written as NIfTI."""
    rng = np.random.default_rng(4)
    affine = np.diag([-0.9, -0.9, 1.7, 1.0])  # LPS storage seen in RAS
    affine[:3, 3] = (60.0, 40.0, -25.0)
    shape = (30, 34, 19)  # i, j, k
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[::-1]), indexing="ij")
    organ = ((xx - 0.2) ** 2 + yy ** 2 + (zz * 0.8) ** 2) < 0.35
    files = []
    for n, key in enumerate(KEYS):
        arr = np.where(organ, 80.0 + 90 * n, -20.0) + rng.normal(0, 25, organ.shape)
        files.append(write_volume(Volume(arr.astype(np.float32), affine, name=key), tmp_path / f"{key}.nii.gz"))
    return files


def _monai_reference(folder: Path, files: list[Path]) -> np.ndarray:
    """The same config run by MONAI from the files: its readers, its transforms, its inversion."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_meta(str(folder / "configs" / "metadata.json"))
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    net.eval()
    pre, inferer, post = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
    data = pre({**{k: str(f) for k, f in zip(KEYS, files)}, "label": str(files[0])})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], net)[0]
    pred = post(data)["pred"]
    return np.asarray(pred[0]).transpose(2, 1, 0)  # (i, j, k) -> [k, j, i] like MedAI's layers


def test_each_loaded_key_gets_its_own_volume_and_labels_equal_monai_from_files(tmp_path):
    folder = _bundle(tmp_path / "bundle")
    files = _phase_files(tmp_path)
    model = load_model(folder, "cpu", trust=True)
    assert [i["name"] for i in model.card.inputs] == KEYS  # "label" is loaded but never used: not an input
    volumes = [read_image(f) for f in files]
    result = segment(model, volumes)
    want = _monai_reference(folder, files)
    got = result.layers[0]
    assert got.shape == want.shape == volumes[0].array.shape
    assert len(np.unique(want)) >= 2  # the comparison sees more than one label
    assert np.array_equal(got, np.rint(want).astype(got.dtype))
    assert [lab.name for lab in result.labels] == ["cortex", "medulla"]
    with pytest.raises(GeometryError, match="expects 3 volumes"):
        segment(model, volumes[:2])
