"""Shared fixtures: a headless Slicer from slicer-core's real logics, real sample data, tiny real models."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this checkout's medai/, also from a git worktree
MODEL_ZOO = REPO.parent / "shared" / "fixtures" / "model-zoo"
# bundles not in ../shared: local copies of their configs (Testing/Data/model-zoo/README.md; not committed)
MODEL_ZOO_LOCAL = REPO / "Testing" / "Data" / "model-zoo"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def scene():
    """A fresh MRML scene with real application, segmentations, volumes and colors logics."""
    from medai.slicer.headless import make_headless_slicer

    return make_headless_slicer()


@pytest.fixture(scope="session")
def mni_files() -> dict:
    """The MNI152 2009a T1, GM and WM maps from the pinned nilearn wheel (fetched once, cached)."""
    from medai.models.catalog import fetch_sample

    return fetch_sample("mni152-t1")


@pytest.fixture
def model_zoo() -> Path:
    if not MODEL_ZOO.is_dir():
        pytest.skip(f"MONAI model-zoo fixtures not found at {MODEL_ZOO} (../shared is absent in this checkout)")
    return MODEL_ZOO


def zoo_bundle(name: str) -> Path:
    """A model-zoo bundle's configs: from ../shared/fixtures/model-zoo first, else Testing/Data/model-zoo (else skip)."""
    for root in (MODEL_ZOO, MODEL_ZOO_LOCAL):
        if (root / name / "configs" / "metadata.json").exists():
            return root / name
    pytest.skip(f"configs of model-zoo bundle {name} not found in {MODEL_ZOO} or {MODEL_ZOO_LOCAL} (see {MODEL_ZOO_LOCAL / 'README.md'})")


def oblique_affine(spacing=(0.8, 1.1, 2.5), angles=(0.3, -0.2, 0.5), origin=(-20.0, 35.0, 7.5), flip_x=True) -> np.ndarray:
    """An IJK-to-RAS matrix with rotation, anisotropic spacing and (optionally) a flipped axis."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    if flip_x:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = rot * np.asarray(spacing)
    m[:3, 3] = origin
    return m


def write_unet_card(folder: Path, in_channels: int = 1, labels: dict | None = None, seed: int = 0, **overrides) -> Path:
    """A real MONAI UNet with freshly initialised weights and a model card describing it."""
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    labels = labels or {"1": {"name": "organ", "color": [1.0, 0.0, 0.0]}}
    network = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": in_channels,
               "out_channels": len(labels) + 1, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
    net = UNet(**{k: v for k, v in network.items() if k != "_target_"})
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "model.pt")
    from medai.fetch import sha256_of

    card = {
        "schema": "medai.card/1", "name": folder.name, "task": "segmentation", "network": network,
        "weights": "model.pt", "sha256": sha256_of(folder / "model.pt"),
        "inputs": [{"name": f"ch{n}"} for n in range(in_channels)],
        "preprocessing": {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "intensity": [{"op": "zscore"}]},
        "inference": {"mode": "sliding_window", "roi_size": [32, 32, 32], "overlap": 0.25, "activation": "softmax"},
        "labels": labels,
        "postprocessing": {},
    }
    card.update(overrides)
    path = folder / "medai.json"
    path.write_text(json.dumps(card, indent=1))
    return path


@pytest.fixture
def fresh_medai_home(tmp_path, monkeypatch):
    """A fresh ``MEDAI_HOME`` (remembered trust decisions, downloads) and an empty in-process model cache, before and after."""
    from medai.models.loader import clear_cache

    monkeypatch.setenv("MEDAI_HOME", str(tmp_path / "home"))
    clear_cache()
    yield tmp_path / "home"
    clear_cache()
