"""A bundle's plain argmax ``AsDiscreted`` runs as ``torch.max(dim).indices`` (medai.engine.segment.run_postprocessing):
the same labels, dtype and metadata as MONAI's own transform, ties and NaN included."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Activationsd, AsDiscreted, Compose

from medai.engine.bundle_stream import ArgmaxByMax, is_plain_argmax
from medai.engine.segment import run_postprocessing


def _pred(channels: int, seed: int = 0) -> MetaTensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((channels, 9, 10, 11), generator=g)
    x[1, :3] = x[0, :3]  # ties: the first maximum wins
    x[0, 4, :2] = float("nan")
    x[channels - 1, 4, 1:4] = float("nan")  # NaN wins, the first one
    x[:, 6] = 0.5  # every channel equal
    return MetaTensor(x, affine=torch.diag(torch.tensor([1.5, 0.8, 2.0, 1.0], dtype=torch.float64)), meta={"spatial_shape": (9, 10, 11)})


@pytest.mark.parametrize("channels", [2, 5])
@pytest.mark.parametrize("kwargs", [{}, {"dim": 0, "keepdim": False}, {"dtype": torch.uint8}, {"dim": 1}])
def test_argmax_by_max_equals_monai_asdiscreted(channels, kwargs):
    step = AsDiscreted(keys="pred", argmax=True, **kwargs)
    assert is_plain_argmax(step)
    data = {"pred": _pred(channels), "other": 1}
    theirs = step(copy.deepcopy(data))
    ours = ArgmaxByMax(step)(copy.deepcopy(data))
    assert type(ours["pred"]) is type(theirs["pred"]) and ours["pred"].dtype == theirs["pred"].dtype
    assert torch.equal(ours["pred"].as_tensor(), theirs["pred"].as_tensor())
    assert torch.equal(ours["pred"].affine, theirs["pred"].affine) and ours["other"] == 1
    assert torch.unique(theirs["pred"]).numel() > 1  # several labels present: the comparison means something


def test_only_a_plain_argmax_is_replaced():
    assert not is_plain_argmax(AsDiscreted(keys="pred", argmax=True, to_onehot=2))
    assert not is_plain_argmax(AsDiscreted(keys="pred", threshold=0.5))
    assert not is_plain_argmax(AsDiscreted(keys=["pred", "label"], argmax=[True, False]))


def test_run_postprocessing_labels_equal_the_bundle_compose():
    post = Compose([Activationsd(keys="pred", softmax=True), AsDiscreted(keys="pred", argmax=True)])
    pred = _pred(3, seed=1)
    pred = torch.nan_to_num(pred)  # softmax of NaN is NaN in both; kept out to compare plain labels
    theirs = post({"pred": pred.clone()})["pred"]
    with torch.inference_mode():
        ours = run_postprocessing(post, {"pred": pred.clone()})["pred"]
    assert ours.dtype == theirs.dtype and np.array_equal(np.asarray(ours), np.asarray(theirs))
