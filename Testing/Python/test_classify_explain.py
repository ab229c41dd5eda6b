"""Explanations are right on a constructed case: the net's decision depends only on one region, the heatmap lights it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classify_helpers import masked_model, two_squares
from medai.engine.classify import classify
from medai.explain.gradcam import find_target_layer
from medai.geometry import Volume


def _mask(n: int = 40) -> torch.Tensor:
    mask = torch.zeros(n, n)  # (I, J)
    mask[4:20, 4:20] = 1
    return mask


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "occlusion"])
def test_heatmap_lights_the_deciding_region_only(tmp_path, method):
    model = masked_model(tmp_path, _mask())
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    volume = Volume(two_squares(), affine, "squares")
    result = classify(model, [volume], explain=True, method=method)
    case = result.cases[0]
    assert case.predicted == [1] and case.scores[1] > 0.9
    heat = case.heatmap
    assert heat.shape == volume.array.shape
    inside = heat[0, 9:14, 9:14]  # [k, j, i]: the square inside the mask
    outside = heat[0, 26:32, 26:32]  # the equally bright square the net ignores
    assert inside.min() > 0.5, f"{method}: the deciding square is not lit ({inside.min():.3f})"
    assert outside.max() < 0.05, f"{method}: the ignored square is lit ({outside.max():.3f})"
    spots = [f for f in case.findings if f.kind == "hot spot"]
    assert spots, "no hot spot found"
    centre_i, centre_j = 11.0 * 0.7, 11.0 * 0.7  # RAS of the inside square's centre
    assert abs(spots[0].position_ras[0] - centre_i) < 2.0 and abs(spots[0].position_ras[1] - centre_j) < 2.0


def test_target_class_and_layer_defaults(tmp_path):
    model = masked_model(tmp_path, _mask())
    assert find_target_layer(model.networks[0]) == "conv"
    volume = Volume(two_squares(), np.eye(4), "squares")
    result = classify(model, [volume], explain=True, target_class="other")
    # explaining 'other' (whose logit falls with the evidence): Grad-CAM's positive part is empty
    assert result.cases[0].heatmap_class == 0
    assert float(result.cases[0].heatmap.max()) == 0.0
    with pytest.raises(ValueError, match="not a class of model"):
        classify(model, [volume], target_class="nodule")


def test_gradcam_leaves_no_hooks_on_the_cached_network(tmp_path):
    """The network is cached and shared: explanation must not leave hooks behind on it."""
    from medai.explain.gradcam import find_target_layer, gradcam

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    layer = dict(net.named_modules())[find_target_layer(net)]
    x = torch.randn(1, 1, 8, 8, 8)
    for plus in (False, True, False):
        heat = gradcam(net, x, 1, plus=plus)
        assert heat.shape == (8, 8, 8)
    assert not layer._forward_hooks and not layer._backward_hooks
