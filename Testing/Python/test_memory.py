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


@pytest.mark.parametrize("shape", [(7, 9, 11), (105, 6, 5, 4), (3, 33, 17, 29)])
def test_in_place_softmax_is_bit_identical(shape):
    from medai.engine.common import softmax_

    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 6
    for dim in range(len(shape)):
        y = x.clone()
        assert softmax_(y, dim).data_ptr() == y.data_ptr()
        assert torch.equal(y, torch.softmax(x, dim=dim)), dim
        strided = x.clone().transpose(0, -1)  # not contiguous: same values through a copy
        want = torch.softmax(strided, dim=dim)
        assert torch.equal(softmax_(strided, dim), want) and not strided.is_contiguous()


def bundle_with_a_tiny_network(src, dest, classes: int):
    """The bundle's own configs (preprocessing, inferer, postprocessing) around a fresh 3x3x3 convolution."""
    import json
    import shutil

    shutil.copytree(src, dest)
    cfg = json.loads((dest / "configs" / "inference.json").read_text())
    cfg["network_def"] = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": classes, "kernel_size": 3, "padding": 1}
    (dest / "configs" / "inference.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    (dest / "models").mkdir(exist_ok=True)
    torch.save(torch.nn.Conv3d(1, classes, 3, padding=1).state_dict(), dest / "models" / "model.pt")
    return dest


@pytest.mark.parametrize("name, classes, spacing", [
    ("spleen_ct_segmentation", 2, (8.0, 8.0, 12.0)),  # network grid >= its 96^3 window: no padding, softmax fully in place
    ("wholeBody_ct_segmentation", 105, (4.0, 4.0, 5.0)),  # padded window: the output is a strided view, softmax via a copy
])
def test_bundle_labels_match_its_own_postprocessing(model_zoo, tmp_path, name, classes, spacing):
    """MedAI's in-place softmax before the rest of the bundle's chain gives the labels of the bundle's own Compose.

    spleen: softmax, Invertd (linear), argmax; wholeBody: softmax, argmax, Invertd (nearest), 105 classes.
    """
    from monai.data import MetaTensor

    from medai.engine.segment import _to_reference_grid

    model = load_model(bundle_with_a_tiny_network(model_zoo / name, tmp_path / name, classes), "cpu", trust=True)
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 30, size=(18, 20, 22)).astype(np.float32)
    vol = Volume(arr, oblique_affine(spacing=spacing, angles=(0.2, 0.1, 0.3)), name=name)
    result = segment(model, [vol])
    parts = model.bundle
    image = MetaTensor(torch.from_numpy(arr.transpose(2, 1, 0)[None].copy()), affine=torch.as_tensor(vol.ijk_to_ras),
                       meta={"filename_or_obj": name, "original_affine": torch.as_tensor(vol.ijk_to_ras),
                             "spatial_shape": np.asarray(vol.shape_ijk), "original_channel_dim": 0, "space": "RAS"})
    data = parts.preprocessing({parts.image_key: image})
    with torch.no_grad():
        pred = parts.inferer(data[parts.image_key][None], model.networks[0])
    data["pred"] = MetaTensor(torch.as_tensor(pred)[0].float(), affine=data[parts.image_key].affine, meta=dict(data[parts.image_key].meta))
    data = parts.postprocessing(data)  # the bundle's own chain, softmax included
    want = np.rint(_to_reference_grid(data["pred"], vol)[0]).astype(result.layers[0].dtype)
    assert np.array_equal(result.layers[0], want)
    assert len(np.unique(want)) >= 2
    assert [type(t).__name__ for t in parts.postprocessing.transforms][0] == "Activationsd"  # the in-place path ran
