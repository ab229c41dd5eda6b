"""Metrics against values computed by hand on constructed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from medai import metrics


def _cube(lo: int, hi: int, shape=(32, 32, 32)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_shifted_cubes_dice_and_volume():
    a = np.zeros((32, 32, 32), bool)
    b = np.zeros((32, 32, 32), bool)
    a[10:20, 10:20, 10:20] = True
    b[10:20, 10:20, 12:22] = True  # shifted by 2 voxels: overlap 10*10*8
    assert metrics.dice(a, b) == pytest.approx(2 * 800 / 2000)
    rows = metrics.segmentation_metrics(a.astype(np.uint8), b.astype(np.uint8), {1: "cube"}, spacing=(1, 1, 1))
    assert rows[0]["volume_diff_ml"] == pytest.approx(0.0)
    # every face shifts by 2 voxels along one axis: the largest directed distance is 2 mm
    assert rows[0]["hd"] == pytest.approx(2.0)


def test_nested_cubes_surface_distances_by_hand():
    inner, outer = _cube(10, 20), _cube(8, 22)
    # inner surface -> outer surface: every shell voxel of the inner cube is 2 voxels from a face of the outer
    d_inner = [2.0] * (10**3 - 8**3)
    # outer surface -> inner (solid) cube: per-axis excess 2 (coords 8, 21), 1 (9, 20), 0 inside
    excess = {8: 2, 9: 1, 20: 1, 21: 2}
    d_outer = []
    for x, y, z in itertools.product(range(8, 22), repeat=3):
        e = [excess.get(c, 0) for c in (x, y, z)]
        if 2 in e:  # on the outer cube's surface
            d_outer.append(math.sqrt(sum(v * v for v in e)))
    assert len(d_outer) == 14**3 - 12**3
    expected_hd95 = max(np.percentile(d_inner, 95), np.percentile(d_outer, 95))
    expected_msd = float(np.mean(d_inner + d_outer))
    got = metrics.surface_distances(inner, outer)
    assert got["hd95"] == pytest.approx(expected_hd95)
    assert got["msd"] == pytest.approx(expected_msd)
    assert got["hd"] == pytest.approx(math.sqrt(12))
    # anisotropic spacing scales the distances along that axis
    scaled = metrics.surface_distances(inner, outer, spacing=(2.0, 2.0, 2.0))
    assert scaled["msd"] == pytest.approx(2 * expected_msd)
    assert metrics.dice(inner, outer) == pytest.approx(2 * 1000 / (1000 + 2744))


def test_surface_distances_match_monai():
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(0)
    a = _cube(6, 20) & (rng.random((32, 32, 32)) > 0.05)
    b = _cube(9, 24)
    ours = metrics.surface_distances(a, b, spacing=(1.0, 1.0, 1.0))
    t = lambda m: np.stack([~m, m])[None].astype(np.float32)  # noqa: E731 one-hot (B, C, ...)
    import torch

    hd95 = compute_hausdorff_distance(torch.from_numpy(t(a)), torch.from_numpy(t(b)), percentile=95).item()
    asd = compute_average_surface_distance(torch.from_numpy(t(a)), torch.from_numpy(t(b)), symmetric=True).item()
    assert ours["hd95"] == pytest.approx(hd95, rel=1e-5)
    assert ours["msd"] == pytest.approx(asd, rel=1e-5)


def test_empty_masks():
    empty = np.zeros((8, 8, 8), bool)
    assert metrics.dice(empty, empty) == 1.0
    assert math.isnan(metrics.surface_distances(empty, _cube(2, 5, (8, 8, 8)))["hd95"])


def test_classification_hand_made_confusion_matrix():
    # 3 classes; truth and predictions chosen so the confusion matrix is known
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    probs = np.full((10, 3), 0.1)
    for n, p in enumerate(y_pred):
        probs[n, p] = 0.8
    out = metrics.classification_metrics(y_true, probs, ["a", "b", "c"])
    assert out["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert out["accuracy"] == pytest.approx(7 / 10)
    a, b, c = out["per_class"]
    assert a["precision"] == pytest.approx(3 / 4) and a["recall"] == pytest.approx(3 / 4) and a["f1"] == pytest.approx(3 / 4)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == pytest.approx(2 / 3)
    assert c["precision"] == pytest.approx(2 / 3) and c["recall"] == pytest.approx(2 / 3)
    # class a scores: 0.8 for predicted-a cases (3 positives, 1 negative), 0.1 otherwise (1 positive, 5 negatives)
    # pairs (pos, neg): 3*1 ties + 3*5 wins + 1*1 losses + 1*5 ties -> (15 + 0.5*(3+5)) / 24
    assert a["auc"] == pytest.approx((15 + 0.5 * 8) / 24)
    assert out["macro"]["f1"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)


def test_auc_perfect_and_reversed_and_curve():
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert metrics.roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    fpr, tpr = metrics.roc_curve([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_regression():
    out = metrics.regression_metrics([1, 2, 3, 4], [2, 3, 4, 5])
    assert out["mae"] == pytest.approx(1.0)
    assert out["correlation"] == pytest.approx(1.0)
    assert metrics.regression_metrics([1, 2, 3], [3, 2, 1])["correlation"] == pytest.approx(-1.0)
