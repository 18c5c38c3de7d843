"""The review of a propagation (annotation/review.py): which slices are doubtful, Qt-free."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from napari_sam.annotation.review import PropagationReview, doubts, overlaps
from napari_sam.propagation import SliceRecord

NAN = math.nan


def rec(z, oid, status="ok", score=0.95, iou=0.9, area=100):
    return SliceRecord(z, oid, score, iou, area, status)


def test_stops_low_scores_and_drops_are_doubtful_the_rest_is_not():
    records = [((5,), rec(5, 1, "seed", NAN, NAN))]
    records += [((z,), rec(z, 1, iou=0.9)) for z in (6, 7, 9)]
    records += [((8,), rec(8, 1, score=0.6)),            # low score
                ((10,), rec(10, 1, iou=0.45)),           # low IoU
                ((11,), rec(11, 1, iou=0.6)),            # a drop: 0.3 below the median
                ((12,), rec(12, 1, "changed", 0.8, 0.2)),
                ((4,), rec(4, 1, "cancelled", NAN, NAN)),  # not the propagation's doubt
                ((3,), rec(3, 1, "stop_marker", NAN, NAN))]
    found = {d.slice_index[0]: d for d in doubts(records)}
    assert sorted(found) == [8, 10, 11, 12]
    assert found[8].reason == "low score 0.60"
    assert "IoU 0.45" in found[10].reason and "dropped to 0.60 (median 0.90)" in found[11].reason
    assert found[12].stopped and found[12].reason.startswith("stopped: changed")
    assert not found[8].stopped


def test_overlapping_masks_are_listed_where_they_begin():
    a = np.zeros((20, 20), bool)
    a[2:10, 2:10] = True
    b = np.roll(a, 7, axis=1)                            # 8 px of 64 shared: 12.5 %
    c = np.zeros_like(a)
    c[15:18, 15:18] = True
    assert overlaps({1: a, 2: b, 3: c}) == [(1, 2, 8, 0.125)]
    assert overlaps({1: a, 3: c}) == []
    layers = SimpleNamespace(axis_names=("z",), where=lambda idx: f"z={idx[0]}")
    said = []
    review = PropagationReview(SimpleNamespace(review=None, message=SimpleNamespace(text="done")),
                               layers, None, lambda level, text: said.append(text))
    review.step(SimpleNamespace(slice_index=(4,), records=(rec(4, 1, "seed"), rec(4, 2, "seed")),
                                masks={1: a, 2: c}))
    for z in (5, 6, 3):                                  # merging on both sides of the seed
        review.step(SimpleNamespace(slice_index=(z,), records=(rec(z, 1), rec(z, 2)),
                                    masks={1: a, 2: b}))
    listed = [(d.slice_index, d.object_id) for d in review.state.review.doubts]
    assert listed == [((3,), 1), ((3,), 2), ((5,), 1), ((5,), 2)]   # not again on z=6
    assert "overlaps label 2 (8 px, 12%): merging?" in review.state.review.doubts[0].reason
    assert review.state.review.running
    review.finished()
    assert not review.state.review.running
    assert said == ["done. Check 2 doubtful slice(s) of 4: z=3, z=5 (next doubtful: Shift+D)"]
