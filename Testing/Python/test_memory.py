"""Channel-at-a-time discretisation gives exactly the labels of resampling all channels and then argmax/threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import oblique_affine, write_unet_card
from medai.engine.progress import Progress
from medai.engine.segment import _back_to_grid, _discretize_on_grid, _run_network, running_argmax, segment
from medai.geometry import Volume, reorient_to_ras
from medai.models.loader import load_model

LABELS = {"1": "liver", "2": "spleen", "3": "kidney", "4": "bone"}


def reference_layers(out, out_affine, stage, shape, affine, card) -> list[np.ndarray]:
    """The former implementation: every channel on the working grid at once, then argmax or threshold."""
    probs = _back_to_grid(out.cpu(), out_affine, stage, shape, affine)
    if card.discretize == "threshold":
        thr = float(card.raw.get("threshold", 0.5))
        return [(probs[c] > thr).numpy().astype(np.uint8) for c in range(probs.shape[0])]
    return [torch.argmax(probs, dim=0).numpy().astype(np.uint8)]


@pytest.mark.parametrize("inference, discretize", [
    ({"mode": "sliding_window", "roi_size": [16, 16, 16], "overlap": 0.25, "activation": "softmax"}, "argmax"),
    ({"mode": "resize", "roi_size": [16, 16, 16], "activation": "softmax"}, "argmax"),
    ({"mode": "sliding_window", "roi_size": [16, 16, 16], "overlap": 0.25, "activation": "sigmoid"}, "threshold"),
])
def test_channel_at_a_time_labels_are_identical(tmp_path, inference, discretize):
    path = write_unet_card(tmp_path / "card", labels=LABELS, inference=inference, discretize=discretize,
                           preprocessing={"orientation": "RAS", "spacing": [2.5, 2.0, 3.0], "intensity": [{"op": "zscore"}]})
    model = load_model(path, "cpu")
    card, stage = model.card, model.card.stages[0]
    assert card.discretize == discretize
    rng = np.random.default_rng(3)
    arr = np.cumsum(rng.normal(size=(30, 26, 22)), axis=0).astype(np.float32)  # smooth-ish: varied argmax
    vol = Volume(arr, oblique_affine(spacing=(1.1, 1.3, 1.7)), name="t")
    x, affine, _ = reorient_to_ras(torch.from_numpy(arr.transpose(2, 1, 0)[None].copy()), vol.ijk_to_ras)
    shape = tuple(x.shape[1:])
    out, out_affine = _run_network(stage, model.networks[0], x.contiguous(), affine, model.device, {}, Progress(None, None))
    assert tuple(out.shape[1:]) != shape  # the labels come through resampling
    got = _discretize_on_grid(out, out_affine, stage, shape, affine, card)
    want = reference_layers(out, out_affine, stage, shape, affine, card)
    assert len(got) == len(want) == (len(LABELS) + 1 if card.discretize == "threshold" else 1)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and np.array_equal(g, w)
    if card.discretize != "threshold":
        assert len(np.unique(got[0])) >= 2
    result = segment(model, [vol])  # the whole path still runs on the input grid
    assert result.layers[0].shape == arr.shape


def test_running_argmax_keeps_the_first_maximum():
    values = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 3.0, 1.0, 0.0], [2.0, 1.0, 3.0, 0.0]])
    assert running_argmax(iter(values), (4,), 3).tolist() == torch.argmax(values, dim=0).tolist() == [1, 0, 0, 0]
    many = torch.randn(300, 50)
    assert np.array_equal(running_argmax(iter(many), (50,), 300), torch.argmax(many, 0).numpy().astype(np.uint16))
