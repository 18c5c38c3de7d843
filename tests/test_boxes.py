"""Box utilities against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.boxes import (
    batched_nms,
    box_area,
    box_intersection,
    box_iou,
    boxes_from_masks,
    near_crop_edge,
    nms,
    overlapping_pairs,
)


def _random_boxes(rng, n, size=100, max_side=40, zero_area=False):
    r0 = rng.integers(0, size, n)
    c0 = rng.integers(0, size, n)
    lo = 0 if zero_area else 1
    return np.stack(
        [r0, c0, r0 + rng.integers(lo, max_side, n), c0 + rng.integers(lo, max_side, n)], axis=1
    ).astype(float)


def _iou_ref(a, b):
    inter_r = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_c = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_r * inter_c
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_ref(boxes, scores, thresh):
    """Textbook greedy NMS, one pair at a time."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(_iou_ref(boxes[i], boxes[k]) <= thresh for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.7, 1.0], ids=lambda t: f"t{t}")
def test_nms_matches_brute_force(seed, thresh):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 60, zero_area=seed == 3)
    scores = rng.random(60)
    if seed == 2:
        scores = np.round(scores, 1)  # many ties: lower index first
    assert nms(boxes, scores, thresh).tolist() == _nms_ref(boxes, scores, thresh)


def test_nms_removes_exact_duplicates_and_keeps_disjoint():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], float)
    assert nms(boxes, [0.5, 0.9, 0.1], 0.7).tolist() == [1, 2]


def test_nms_empty():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_batched_nms_groups_do_not_compete():
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 40)
    scores = rng.random(40)
    groups = rng.integers(0, 3, 40)
    keep = batched_nms(boxes, scores, groups, 0.4)
    expected = []
    for g in range(3):
        idx = np.flatnonzero(groups == g)
        expected += idx[_nms_ref(boxes[idx], scores[idx], 0.4)].tolist()
    assert sorted(keep.tolist()) == sorted(expected)
    assert (np.diff(scores[keep]) <= 0).all()


def test_box_iou_and_intersection_match_brute_force():
    rng = np.random.default_rng(7)
    a = _random_boxes(rng, 15, zero_area=True)
    b = _random_boxes(rng, 9, zero_area=True)
    iou = box_iou(a, b)
    inter = box_intersection(a, b)
    for i in range(len(a)):
        for j in range(len(b)):
            assert iou[i, j] == pytest.approx(_iou_ref(a[i], b[j]))
            assert inter[i, j] == pytest.approx(
                max(0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
                * max(0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            )
    assert box_area([[1, 2, 4, 7]]).tolist() == [15.0]


def test_boxes_from_masks_half_open():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 20, 30)) < 0.02
    masks[0] = False
    masks[1] = False
    masks[1, 4, 9] = True
    out = boxes_from_masks(masks)
    assert out[0].tolist() == [0, 0, 0, 0]
    assert out[1].tolist() == [4, 9, 5, 10]
    for m, b in zip(masks[2:], out[2:]):
        rows, cols = np.nonzero(m)
        assert b.tolist() == [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed{s}")
def test_overlapping_pairs_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 50, zero_area=True)
    expected = {
        (i, j)
        for i in range(50)
        for j in range(i + 1, 50)
        if min(boxes[i, 2], boxes[j, 2]) > max(boxes[i, 0], boxes[j, 0])
        and min(boxes[i, 3], boxes[j, 3]) > max(boxes[i, 1], boxes[j, 1])
    }
    got = {tuple(p) for p in overlapping_pairs(boxes).tolist()}
    assert got == expected


def test_near_crop_edge():
    crop = (10, 10, 50, 50)
    boxes = np.array(
        [
            [20, 20, 30, 30],  # inside
            [10, 20, 30, 30],  # touches the crop's top edge (not the image's)
            [20, 20, 50, 30],  # touches the crop's bottom edge
            [20, 20, 30, 50],  # touches the right edge, which is the image's edge
        ],
        float,
    )
    assert near_crop_edge(boxes, crop, (100, 50)).tolist() == [False, True, True, False]
    assert not near_crop_edge(boxes, (0, 0, 100, 50), (100, 50)).any()


@pytest.mark.parametrize(
    "boxes",
    [np.zeros((3, 3)), np.array([[5, 0, 1, 4]])],
    ids=["shape", "inverted"],
)
def test_bad_boxes_raise(boxes):
    with pytest.raises(ValueError, match="row_min"):
        nms(boxes, np.zeros(len(boxes)), 0.5)


def test_nms_checks_scores_and_threshold():
    with pytest.raises(ValueError, match="scores"):
        nms(np.zeros((2, 4)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="iou_thresh"):
        nms(np.zeros((2, 4)), np.zeros(2), 1.5)
