"""Small real networks and model cards for the classification tests (no mocks: real MONAI/torch modules)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medai.models.card import parse_card
from medai.models.loader import LoadedModel


def write_card(folder: Path, network: dict, card: dict, seed: int = 0, name: str = "medai.json",
               calibrate: tuple[int, ...] | None = None) -> Path:
    """Build ``network`` with fresh weights (seeded), save them, and write a card using them.

    ``calibrate`` (an input shape ``(B, C, *S)``): run a few training-mode passes on random
    inputs first, so batch-norm running statistics are real ones. Deep fresh nets such as
    EfficientNet otherwise shrink every activation to ~1e-13 in eval mode (all scores equal).
    """
    from medai.models.loader import build_network

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    net = build_network(network, "test")
    if calibrate is not None:
        net.train()
        with torch.no_grad():
            for _ in range(3):
                net(torch.randn(*calibrate))
        net.eval()
    torch.save(net.state_dict(), folder / "model.pt")
    raw = {"schema": "medai.card/1", "name": folder.name, "network": network, "weights": "model.pt", **card}
    path = folder / name
    path.write_text(json.dumps(raw, indent=1))
    return path


SMALL_DENSENET_3D = {"_target_": "monai.networks.nets.DenseNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                     "init_features": 8, "growth_rate": 4, "block_config": [2, 2], "bn_size": 2}

KERAS_PNEUMONIA_CNN = {  # the classic Keras example: one conv layer, flatten, dense (sigmoid from the card)
    "_target_": "monai.networks.nets.Classifier", "in_shape": [1, 64, 64], "classes": 1, "channels": [8], "strides": [2],
    "num_res_units": 0, "last_act": None,
}


def keras_pneumonia_card(folder: Path, mode: str = "resize", seed: int = 0) -> Path:
    """The Keras-pneumonia-style 2D card: grey 0..255 radiograph -> 64x64 -> one sigmoid output, classes normal/pneumonia."""
    return write_card(folder, KERAS_PNEUMONIA_CNN, {
        "task": "classification", "inputs": [{"name": "CXR"}], "classes": ["normal", "pneumonia"],
        "preprocessing": {"intensity": [{"op": "scale_range", "a_min": 0, "a_max": 255}]},
        "inference": {"mode": mode, "roi_size": [64, 64], "activation": "sigmoid"}}, seed=seed)


class MaskedEvidenceNet(torch.nn.Module):
    """2D net with hand-set weights whose 'target' logit depends only on the image inside ``mask`` (I, J)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float()[None, None])
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
        self.relu = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = self.relu(self.conv(x * self.mask)).mean(dim=(2, 3))
        return torch.cat([-evidence, evidence], dim=1) * 100.0


def masked_model(tmp: Path, mask: torch.Tensor) -> LoadedModel:
    raw = {"name": "masked-evidence", "task": "classification", "network": {"_target_": "torch.nn.Identity"},
           "classes": ["other", "target"], "preprocessing": {}, "inputs": [{"name": "image"}],
           "inference": {"mode": "resize", "roi_size": list(mask.shape), "activation": "softmax"}}
    card = parse_card(raw, tmp, "masked test card")
    return LoadedModel(card, [MaskedEvidenceNet(mask).eval()], torch.device("cpu"), "card", tmp)


def two_squares(n: int = 40) -> np.ndarray:
    """[1, j, i] image with a bright square at i, j in 8..14 (inside the evidence mask) and one at 25..32 (outside)."""
    img = np.zeros((1, n, n), dtype=np.float32)
    img[0, 8:15, 8:15] = 1.0
    img[0, 25:33, 25:33] = 1.0
    return img
