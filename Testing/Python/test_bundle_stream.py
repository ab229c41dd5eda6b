"""Bundles through the slab-wise sliding window: the bundle's own labels, and memory that does not grow with classes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import oblique_affine
from medai.engine.segment import _to_reference_grid, segment
from medai.geometry import Volume
from medai.models.loader import load_model


class Recorder(torch.nn.Module):
    """The network, with each window's input and output kept so that the reference run replays them."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x):
        out = self.net(x)
        self.calls.append((x.clone(), out.clone()))
        return out


def replay(calls):
    queue = list(calls)

    def predictor(x):
        seen, out = queue.pop(0)
        assert torch.equal(seen, x), "the reference inferer asked for a different window"
        return out.clone()

    return predictor


@pytest.mark.parametrize("name, network", [
    # 1.5 mm grid about 104 x 65 x 64: two 96^3 windows along the first axis, padded across the others;
    # softmax, argmax per slab, then nearest Invertd
    ("wholeBody_ct_segmentation", "tiny"),
    pytest.param("wholeBody_ct_segmentation", "own", marks=pytest.mark.slow),  # its SegResNet: about 10 s a window
    # 1.5 x 1.5 x 2 mm, 4 windows per batch, overlap 0.5: one batch spans both rows; softmax per slab,
    # then linear Invertd of both channels and argmax
    ("spleen_ct_segmentation", "own"),
])
def test_streamed_bundle_labels_equal_the_bundles_own_chain(model_zoo, tmp_path, name, network):
    """Fresh weights (the bundle's own network, or a 3x3x3 convolution with its class count); the reference
    is the bundle's parsed inferer + its full postprocessing Compose, on an oblique anisotropic image."""
    from monai.data import MetaTensor

    from medai.engine.bundle_stream import plan_streaming
    from test_memory import bundle_with_a_tiny_network
    from test_model_zoo import bundle_with_fresh_weights

    folder = (bundle_with_fresh_weights(model_zoo / name, tmp_path / name) if network == "own"
              else bundle_with_a_tiny_network(model_zoo / name, tmp_path / name, 105))
    model = load_model(folder, "cpu", trust=True)
    shape, spacing = (12, 14, 24), (6.5, 7.0, 8.0)
    parts = model.bundle
    plan = plan_streaming(parts.inferer, parts.postprocessing)
    assert plan is not None and type(plan.steps[0]).__name__ == "Activationsd"  # the streamed path runs
    rec = Recorder(model.networks[0])
    model.networks[0] = rec
    rng = np.random.default_rng(0)
    arr = rng.normal(60, 40, size=shape).astype(np.float32)
    vol = Volume(arr, oblique_affine(spacing=spacing, angles=(0.05, -0.04, 0.08)), name=name)
    result = segment(model, [vol])
    assert sum(x.shape[0] for x, _ in rec.calls) >= 2  # windows

    image = MetaTensor(torch.from_numpy(arr.transpose(2, 1, 0)[None].copy()), affine=torch.as_tensor(vol.ijk_to_ras),
                       meta={"filename_or_obj": name, "original_affine": torch.as_tensor(vol.ijk_to_ras),
                             "spatial_shape": np.asarray(vol.shape_ijk), "original_channel_dim": 0, "space": "RAS"})
    data = parts.preprocessing({parts.image_key: image})
    img = data[parts.image_key]
    assert img.shape[1] > 96  # more than one window along the streamed axis
    with torch.no_grad():
        pred = parts.inferer(img[None], replay(rec.calls))
    data["pred"] = MetaTensor(torch.as_tensor(pred)[0].float(), affine=img.affine, meta=dict(img.meta))
    data = parts.postprocessing(data)  # the bundle's own chain
    want = np.rint(_to_reference_grid(data["pred"], vol)[0]).astype(result.layers[0].dtype)
    assert np.array_equal(result.layers[0], want)
    assert len(np.unique(want)) >= 2


def test_cancel_between_streamed_windows(model_zoo, tmp_path):
    from medai.engine.progress import CancelToken, Cancelled
    from test_memory import bundle_with_a_tiny_network

    model = load_model(bundle_with_a_tiny_network(model_zoo / "wholeBody_ct_segmentation", tmp_path / "b", 105), "cpu", trust=True)
    rec = Recorder(model.networks[0])
    model.networks[0] = rec
    vol = Volume(np.random.default_rng(0).normal(0, 1, (12, 14, 24)).astype(np.float32), oblique_affine(spacing=(6.5, 7.0, 8.0)), name="ct")
    token = CancelToken()
    seen = []

    def callback(fraction, stage):
        seen.append((stage, fraction))
        if stage == "inference" and rec.calls:
            token.cancel()

    with pytest.raises(Cancelled):
        segment(model, [vol], callback=callback, cancel=token)
    assert len(rec.calls) == 1  # stopped before the second of two windows
    assert ("inference", pytest.approx(0.15 + 0.7 / 2)) in seen  # progress after the first window


CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    from medai.engine.segment import segment
    from medai.geometry import Volume
    from medai.models.loader import load_model
    model = load_model(sys.argv[1], "cpu", trust=True)
    arr = np.random.default_rng(0).normal(0, 1, (32, 32, 1024)).astype(np.float32)  # ijk 1024 x 32 x 32 as (k, j, i)
    vol = Volume(arr, np.diag([1.5, 1.5, 1.5, 1.0]), name="long")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = segment(model, [vol])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_MB": (after - before) / 1024, "shape": list(result.layers[0].shape),
                      "labels": int(len(np.unique(result.layers[0])))}))
""")


def test_peak_memory_stays_well_below_the_whole_output(model_zoo, tmp_path):
    """105 classes on a 1024 x 32 x 32 grid through the wholeBody chain with a 32^3 window: MONAI's accumulator
    alone is 105 x 1024 x 32 x 32 float32 = 440 MB; the streamed one is one window deep (14 MB), plus a
    chunk of planes for the softmax and the 1-channel labels."""
    from test_memory import bundle_with_a_tiny_network

    folder = bundle_with_a_tiny_network(model_zoo / "wholeBody_ct_segmentation", tmp_path / "wb", 105)
    cfg = json.loads((folder / "configs" / "inference.json").read_text())
    cfg["network_def"]["kernel_size"], cfg["network_def"]["padding"] = 1, 0  # a 1x1x1 conv: fast windows
    cfg["inferer"]["roi_size"] = [32, 32, 32]
    (folder / "configs" / "inference.json").write_text(json.dumps(cfg))
    torch.save(torch.nn.Conv3d(1, 105, 1).state_dict(), folder / "models" / "model.pt")
    whole_output_mb = 105 * 1024 * 32 * 32 * 4 / 2**20
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["shape"] == [32, 32, 1024] and report["labels"] >= 2
    assert report["grew_MB"] < whole_output_mb / 2, report
