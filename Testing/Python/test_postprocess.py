"""Post-processing (cc3d + fill_voids) gives exactly the masks of the former scipy.ndimage implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medai.engine.postprocess import fill_holes, label_boxes, largest_component, postprocess_labelmap
from medai.io import read_image


# --- the reference: MedAI's former scipy.ndimage implementation, verbatim ---------------------------

def ref_largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def ref_fill_holes(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(mask)


def ref_bounding_box(mask):
    box = []
    for axis in range(mask.ndim):
        idx = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        if idx.size == 0:
            return None
        box.append(slice(int(idx.min()), int(idx.max()) + 1))
    return tuple(box)


def ref_postprocess_labelmap(labelmap, values, largest, holes):
    if not (largest or holes):
        return labelmap
    out = labelmap.copy()
    for value in values:
        mask = labelmap == value
        if not mask.any():
            continue
        box = ref_bounding_box(mask)
        sub = mask[box]
        if largest:
            sub = ref_largest_component(sub)
        if holes:
            sub = ref_fill_holes(sub)
        region = out[box]
        region[(region == value) & ~sub] = 0
        region[sub & (region == 0)] = value
    return out


# --- real data: the MNI152 T1 and tissue maps -------------------------------------------------------

@pytest.fixture(scope="module")
def mni_masks(mni_files) -> dict:
    t1 = read_image(mni_files["mni152_t1.nii.gz"]).array.astype(np.float32)
    gm = read_image(mni_files["mni152_gm.nii.gz"]).array
    wm = read_image(mni_files["mni152_wm.nii.gz"]).array
    return {"brain": (gm + wm) > 0.5, "wm": wm > 0.5, "gm": gm > 0.3, "t1>p30": t1 > np.percentile(t1, 30)}


def test_identical_masks_on_the_mni152_sample(mni_masks):
    for name, mask in mni_masks.items():
        lc = largest_component(mask)
        assert np.array_equal(lc, ref_largest_component(mask)), name
        assert np.array_equal(fill_holes(mask), ref_fill_holes(mask)), name
    # the masks are not trivial: several components, and holes to fill
    assert ndimage.label(mni_masks["gm"])[1] > 1
    assert ref_fill_holes(mni_masks["wm"]).sum() > mni_masks["wm"].sum()


def test_identical_labelmaps_on_the_mni152_sample(mni_masks):
    labelmap = np.zeros(mni_masks["brain"].shape, np.uint8)
    labelmap[mni_masks["t1>p30"]] = 3
    labelmap[mni_masks["gm"]] = 1
    labelmap[mni_masks["wm"]] = 2
    for largest, holes, values in ((True, True, [1, 2, 3]), (True, True, [3, 1, 2]), (True, False, [2, 5]), (False, True, [1, 3])):
        got = postprocess_labelmap(labelmap, values, largest, holes)
        assert np.array_equal(got, ref_postprocess_labelmap(labelmap, values, largest, holes)), (values, largest, holes)
    assert not np.array_equal(postprocess_labelmap(labelmap, [1, 2, 3], True, True), labelmap)


# --- edge cases -------------------------------------------------------------------------------------

def test_edge_cases():
    cases = {
        "empty": np.zeros((5, 6, 7), bool),
        "full": np.ones((4, 5, 6), bool),
        "single voxel": np.pad(np.ones((1, 1, 1), bool), 2),
        "one-voxel array": np.ones((1, 1, 1), bool),
        "one-slice array": np.random.default_rng(1).random((1, 9, 9)) > 0.4,
        "flat 2D": np.random.default_rng(2).random((12, 15)) > 0.45,
        "hollow cube": np.pad(np.pad(np.zeros((3, 3, 3), bool), 1, constant_values=True), 1),
        "diagonal touch (26-connected only)": np.eye(5, dtype=bool)[:, :, None] & np.eye(5, dtype=bool)[:, None, :],
    }
    # two components of equal size: the tie must go to the one met first in C order (as scipy numbers them)
    tie = np.zeros((8, 8, 8), bool)
    tie[5:7, 5:7, 0:2] = True
    tie[0:2, 6:8, 6:8] = True
    cases["tie"] = tie
    tie2 = np.zeros((6, 6), bool)
    tie2[4:6, 0:2] = True
    tie2[0:2, 4:6] = True
    cases["tie 2D"] = tie2
    for name, mask in cases.items():
        assert np.array_equal(largest_component(mask), ref_largest_component(mask)), name
        assert np.array_equal(fill_holes(mask), ref_fill_holes(mask)), name
    assert largest_component(tie)[0, 6, 6] and not largest_component(tie)[5, 5, 0]
    assert fill_holes(cases["hollow cube"]).sum() == 5 ** 3


def test_random_masks_match_the_reference():
    rng = np.random.default_rng(0)
    for n in range(15):
        shape = tuple(int(s) for s in rng.integers(3, 20, size=3))
        smooth = ndimage.gaussian_filter(rng.random(shape), sigma=float(rng.uniform(0.5, 2)))
        mask = smooth > np.quantile(smooth, rng.uniform(0.2, 0.8))
        assert np.array_equal(largest_component(mask), ref_largest_component(mask)), n
        assert np.array_equal(fill_holes(mask), ref_fill_holes(mask)), n
        labelmap = np.digitize(smooth, np.quantile(smooth, [0.3, 0.6, 0.85])).astype(np.uint16)
        assert np.array_equal(postprocess_labelmap(labelmap, [1, 2, 3], True, True),
                              ref_postprocess_labelmap(labelmap, [1, 2, 3], True, True)), n


def test_many_labels_use_one_find_objects_pass_with_the_same_result():
    rng = np.random.default_rng(5)
    smooth = ndimage.gaussian_filter(rng.random((30, 28, 26)), sigma=1.5)
    labelmap = np.digitize(smooth, np.quantile(smooth, np.linspace(0.2, 0.98, 24))).astype(np.uint8)
    values = list(range(1, 25)) + [40]
    assert np.array_equal(postprocess_labelmap(labelmap, values, True, True), ref_postprocess_labelmap(labelmap, values, True, True))
    boxes = label_boxes(labelmap, values)
    assert sorted(boxes) == sorted(int(v) for v in np.unique(labelmap) if v > 0)
    assert all(boxes[v] == ref_bounding_box(labelmap == v) for v in boxes)


def test_label_boxes_and_bad_input():
    labelmap = np.zeros((6, 7, 8), np.uint8)
    labelmap[1:3, 2:5, 3:4] = 4
    assert label_boxes(labelmap, [4, 9]) == {4: (slice(1, 3), slice(2, 5), slice(3, 4))}
    with pytest.raises(ValueError, match="2D or 3D"):
        largest_component(np.ones((2, 2, 2, 2), bool))


def test_hole_filling_keeps_c_order_and_the_reference_mask_on_a_non_cubic_box():
    """fill_voids is given the transposed (Fortran-ordered) view; the result must be the same mask, in C order
    (a Fortran result made every later comparison against C arrays several times slower)."""
    rng = np.random.default_rng(5)
    mask = ndimage.binary_dilation(rng.random((23, 31, 17)) > 0.85, iterations=2)
    got = fill_holes(mask)
    assert got.flags.c_contiguous and got.shape == mask.shape
    assert np.array_equal(got, ndimage.binary_fill_holes(mask))
    assert got.sum() > mask.sum()  # there were holes to fill


def test_several_labels_in_one_pass_keep_each_labels_tie_rule_and_order():
    """The multi-label pass (``largest_of_each``) must pick, per value, what the one-label path picks: the
    largest component, ties to the one met first in C order, and must leave other values' voxels alone."""
    labelmap = np.zeros((9, 10, 11), np.uint8)
    labelmap[6:8, 6:8, 0:2] = 1  # value 1: two components of 8 voxels; the later one in C order comes first below
    labelmap[0:2, 7:9, 7:9] = 1
    labelmap[0:1, 0:1, 0:1] = 1  # and a speck
    labelmap[3:5, 0:2, 8:10] = 2  # value 2: a tie and a larger one, which must win
    labelmap[5:7, 3:5, 4:6] = 2
    labelmap[2:5, 3:6, 0:3] = 2
    labelmap[8, 9, 10] = 7  # a value not asked for is left as it is
    for values in ([1, 2], [2, 1], [1, 2, 7, 9]):
        for holes in (False, True):
            got = postprocess_labelmap(labelmap, values, True, holes)
            assert np.array_equal(got, ref_postprocess_labelmap(labelmap, values, True, holes)), (values, holes)
    got = postprocess_labelmap(labelmap, [1, 2], True, False)
    assert got[0, 7, 7] == 1 and got[6, 6, 0] == 0 and got[0, 0, 0] == 0
    assert (got == 2).sum() == 27 and got[8, 9, 10] == 7


def test_few_components_path_keeps_the_first_of_tied_components():
    """Up to ``FEW_COMPONENTS`` components are counted by comparison; a tie among later components must still go
    to the one met first in C order."""
    mask = np.zeros((7, 7, 7), bool)
    mask[0, 0, 0] = True  # component 1: small
    mask[2:4, 5:7, 5:7] = True  # tied, met first
    mask[4:6, 0:2, 0:2] = True  # tied, met second
    for m in (mask, mask[::-1].copy()):
        assert np.array_equal(largest_component(m), ref_largest_component(m))
    assert largest_component(mask)[2, 5, 5] and not largest_component(mask)[4, 0, 0]
