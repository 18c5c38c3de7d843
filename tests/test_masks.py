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
