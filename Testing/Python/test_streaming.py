"""The slab-wise sliding window gives MONAI's stitched values bit for bit; the slab-wise softmax the whole-volume bits."""

from __future__ import annotations

import pytest
import torch

from medai.engine.slab_softmax import scalar_voxels, slab_softmax_exact, softmax_slab
from medai.engine.streaming import stream_sliding_window


class Net(torch.nn.Module):
    """A fixed random 3x3 convolution: output varies across windows and borders (padding effects)."""

    def __init__(self, nd: int, out: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        conv = torch.nn.Conv3d if nd == 3 else torch.nn.Conv2d
        self.conv = conv(1, out, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


CASES = [
    # shape, roi, overlap, sw_batch_size, mode, padding_mode, classes
    ((23, 19, 17), (8, 8, 8), 0.25, 1, "gaussian", "constant", 3),
    ((23, 19, 17), (8, 6, 10), 0.5, 3, "constant", "constant", 1),
    ((5, 7, 9), (8, 8, 8), 0.25, 1, "gaussian", "replicate", 4),  # smaller than the window: padded, then cropped
    ((30, 6, 11), (7, 8, 5), 0.4, 4, "gaussian", "reflect", 2),  # padded on one axis, batches across rows
    ((16, 16, 16), (16, 16, 16), 0.25, 1, "gaussian", "constant", 2),  # one window
    ((40, 12, 12), (6, 12, 12), 0.0, 2, "constant", "constant", 5),  # no overlap
    ((21, 17), (8, 6), 0.3, 2, "gaussian", "constant", 3),  # 2D
    ((3, 40, 9), (8, 8, 8), 0.25, 5, "gaussian", "replicate", 6),  # first axis shorter than the window
]


@pytest.mark.parametrize("shape, roi, overlap, batch, mode, padding, classes", CASES)
def test_stitching_equals_monai(shape, roi, overlap, batch, mode, padding, classes):
    from monai.inferers import sliding_window_inference

    net = Net(len(shape), classes)
    x = torch.randn((1, 1, *shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = sliding_window_inference(x, roi, batch, net, overlap, mode, padding_mode=padding)
        calls = net.calls
        got = stream_sliding_window(x, roi, batch, net, overlap, mode, padding_mode=padding, chunk_elements=37)
    assert net.calls == 2 * calls  # same number of network calls (same batches)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(got, torch.as_tensor(want))


def test_stitching_with_a_reducer_sees_each_plane_once():
    net = Net(3, 4)
    x = torch.randn((1, 1, 26, 12, 10), generator=torch.Generator().manual_seed(2))
    seen: list[tuple[int, int]] = []

    def argmax(chunk, start):
        seen.append((start, chunk.shape[1]))
        return torch.argmax(chunk, 0, keepdim=True).to(torch.uint8)

    with torch.no_grad():
        full = stream_sliding_window(x, (8, 8, 8), 1, net, 0.25, "gaussian")
        labels = stream_sliding_window(x, (8, 8, 8), 1, net, 0.25, "gaussian", reducer=argmax, chunk_elements=4 * 120 * 3)
    assert labels.dtype == torch.uint8 and labels.shape == (1, 1, 26, 12, 10)
    assert torch.equal(labels[0, 0].long(), torch.argmax(full[0], 0))
    planes = sorted(p for s, k in seen for p in range(s, s + k))
    assert planes == list(range(26)) and max(k for _, k in seen) == 3  # every plane once, in chunks of at most 3
    assert len(seen) > 26 // 6  # finished as the windows moved on, not all at the end


@pytest.mark.parametrize("channels", [2, 105])
def test_slab_softmax_has_the_whole_volume_bits(channels):
    torch.manual_seed(3)
    whole = torch.randn(channels, 19, 23, 29) * 6
    want = torch.softmax(whole, 0)
    plane = 23 * 29
    for step in (1, 4, 7):
        got = torch.cat([softmax_slab(whole[:, i:i + step], i * plane, whole[0].numel()) for i in range(0, 19, step)], 1)
        assert torch.equal(got, want), step
    assert slab_softmax_exact(channels)


def test_plain_slab_softmax_is_not_exact_which_is_why_the_fix_exists():
    """torch's softmax gives some voxels a scalar exp, depending on the tensor's length: a slab alone differs."""
    torch.manual_seed(4)
    whole = torch.randn(105, 37, 41, 29) * 4
    want = torch.softmax(whole, 0)
    naive = torch.cat([torch.softmax(whole[:, i:i + 3], 0) for i in range(0, 37, 3)], 1)
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("no vector kernels on this CPU: vector and scalar exp are the same")
    assert not torch.equal(naive, want)
    assert scalar_voxels(100, 2, 16) == [(48, 50), (98, 100)] and scalar_voxels(96, 3, 16) == []


def test_outputs_it_cannot_stitch_are_refused_before_any_stitching():
    from medai.engine.streaming import NotStreamable

    x = torch.randn(1, 1, 12, 12, 12)
    with pytest.raises(NotStreamable, match="one tensor"):
        stream_sliding_window(x, (8, 8, 8), 1, lambda w: (w, w))
    with pytest.raises(NotStreamable, match="differs from the input window"):
        stream_sliding_window(x, (8, 8, 8), 1, lambda w: w[:, :, ::2, ::2, ::2])


def test_only_plain_sliding_windows_with_per_voxel_leading_steps_are_streamed():
    from monai.inferers import SimpleInferer, SlidingWindowInferer, SlidingWindowInfererAdapt
    from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd, Spacingd

    from medai.engine.bundle_stream import plan_streaming

    sw = SlidingWindowInferer((8, 8, 8))
    pre = Compose([Spacingd("image", (1.0, 1.0, 1.0))])
    invert = Invertd("pred", pre, orig_keys="image")
    plan = plan_streaming(sw, Compose([Activationsd("pred", softmax=True), AsDiscreted("pred", argmax=True), invert]))
    assert plan is not None and len(plan.steps) == 2 and list(plan.rest.transforms) == [invert]
    assert plan_streaming(sw, Compose([AsDiscreted("pred", threshold=0.5)])).rest is None
    for inferer, post in [
        (sw, Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)])),  # sigmoid: not modelled
        (sw, Compose([invert, AsDiscreted("pred", argmax=True)])),  # nothing per voxel first
        (sw, Compose([Activationsd(["pred", "label"], softmax=True)])),  # other keys
        (SlidingWindowInfererAdapt((8, 8, 8)), Compose([Activationsd("pred", softmax=True)])),
        (SimpleInferer(), Compose([Activationsd("pred", softmax=True)])),
        (SlidingWindowInferer((8, 8, 8), buffer_steps=2), Compose([Activationsd("pred", softmax=True)])),
    ]:
        assert plan_streaming(inferer, post) is None
