"""``napari_sam.masks.keep_prompted_parts``."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.masks import keep_prompted_parts


def _two_parts() -> np.ndarray:
    m = np.zeros((20, 30), dtype=bool)
    m[2:8, 2:8] = True  # part A
    m[12:18, 20:28] = True  # part B
    m[10, 12] = True  # a speck 3 px from A
    return m


def test_keeps_the_part_under_a_positive_point():
    m = _two_parts()
    out = keep_prompted_parts(m, points=[[4.2, 3.8]], labels=[1])
    assert out[2:8, 2:8].all() and not out[12:18, 20:28].any() and not out[10, 12]


def test_negative_points_do_not_select_and_several_positives_keep_several_parts():
    m = _two_parts()
    out = keep_prompted_parts(m, points=[[4, 4], [15, 24]], labels=[0, 1])
    assert not out[2:8, 2:8].any() and out[12:18, 20:28].all()
    both = keep_prompted_parts(m, points=[[4, 4], [15, 24]])  # labels default: positive
    assert both[2:8, 2:8].all() and both[12:18, 20:28].all() and not both[10, 12]


def test_box_selects_when_no_point_is_inside_and_nothing_is_ever_emptied():
    m = _two_parts()
    out = keep_prompted_parts(m, box=[10, 18, 19, 29])
    assert out[12:18, 20:28].all() and not out[2:8, 2:8].any()
    # a point off the mask and a box off the mask: unchanged
    np.testing.assert_array_equal(keep_prompted_parts(m, points=[[0, 29]], box=[0, 10, 1, 12]), m)
    np.testing.assert_array_equal(keep_prompted_parts(m), m)


def test_parts_across_a_thin_gap_are_one_part_unless_gap_is_0():
    m = np.zeros((10, 12), dtype=bool)
    m[2:8, 1:5] = True
    m[2:8, 6:10] = True  # cut from the first by a 1 px column
    np.testing.assert_array_equal(keep_prompted_parts(m, points=[[4, 2]]), m)
    alone = keep_prompted_parts(m, points=[[4, 2]], gap=0)
    assert alone[2:8, 1:5].all() and not alone[:, 6:].any()


def test_diagonal_neighbours_are_one_part_and_single_parts_are_returned_as_is():
    m = np.zeros((6, 6), dtype=bool)
    m[1, 1] = m[2, 2] = m[3, 3] = True
    np.testing.assert_array_equal(keep_prompted_parts(m, points=[[1, 1]]), m)
    with pytest.raises(ValueError, match="2D"):
        keep_prompted_parts(np.zeros((2, 3, 4), bool))


def _reference(mask, points, box, gap):
    """The same rule on the whole image (no bounding-box crop)."""
    from scipy import ndimage as ndi

    eight = np.ones((3, 3), bool)
    grown = ndi.binary_dilation(mask, eight, iterations=gap) if gap else mask
    parts, n = ndi.label(grown, structure=eight)
    if n <= 1:
        return mask
    parts[~mask] = 0
    keep = {int(parts[r, c]) for r, c in points} - {0}
    if not keep and box is not None:
        keep = set(np.unique(parts[box[0] : box[2] + 1, box[1] : box[3] + 1]).tolist()) - {0}
    return np.isin(parts, sorted(keep)) if keep else mask


@pytest.mark.parametrize("gap", [0, 1, 2])
def test_bounding_box_crop_gives_the_whole_image_result(gap):
    rng = np.random.default_rng(gap)
    for _ in range(30):
        mask = np.zeros((60, 70), bool)
        for _ in range(rng.integers(1, 5)):
            r, c = rng.integers(0, 60), rng.integers(0, 70)
            mask[r : r + rng.integers(1, 9), c : c + rng.integers(1, 9)] = True
        points = rng.integers(0, [60, 70], size=(2, 2))
        box = [int(v) for v in (*rng.integers(0, [60, 70]), *rng.integers(0, [60, 70]))]
        box = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
        mine = keep_prompted_parts(mask, points, None, box, gap=gap)
        np.testing.assert_array_equal(mine, _reference(mask, points, box, gap))
