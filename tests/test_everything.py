"""Everything mode: exact tests with an oracle predictor, plus the real model code.

``_Oracle2D`` is a stand-in predictor whose *image is the label image*: ``embed``
keeps the integer labels of the slice (or crop) it is given, and a point prompt
returns the instance under the point. That makes crops and stacks work without
knowing where a crop came from.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from napari_sam.contract import BasePredictor, Prediction
from napari_sam.everything import (
    Cancelled,
    EverythingResult,
    segment_everything,
    segment_everything_stack,
)
from napari_sam.everything._core import crop_boxes
from napari_sam.everything._decoding import point_grid
from napari_sam.everything._masks import CompactMask, clean_mask, mask_iou
from napari_sam.everything._resolve import (
    Candidates,
    drop_contained_parts,
    mask_dedup,
    resolve_overlaps,
)
from tolerance import assert_close_rounding

# --------------------------------------------------------------------------- stand-ins


@dataclass(frozen=True)
class _Token:
    labels: np.ndarray
    original_size: tuple[int, int]
    contrast_limits: tuple[float, float] | None


class _Oracle2D(BasePredictor):
    """A point selects the instance under it: 3 identical masks, score 1.0.

    Logits are +``inside`` in the object and ``outside`` elsewhere; on background
    the masks are empty with score ``miss_score``. ``candidates(labels, obj)`` may
    replace the 3 candidates: it returns ``[(mask, logits, score), ...] * 3``.
    Low-res logits have the slice's shape, so ``upscale`` is the identity; it
    declares ``lowres_decoding`` so that everything mode filters before upscaling.
    """

    lowres_decoding = True

    def __init__(self, *, inside=10.0, outside=-10.0, miss_score=0.1, candidates=None):
        self.inside = inside
        self.outside = outside
        self.miss_score = miss_score
        self.candidates = candidates
        self.embedded = 0
        self.limits_seen: list = []
        self.predict_calls = 0
        self.batch_calls = 0
        self.upscale_calls = 0

    def embed(self, image, *, contrast_limits=None):
        self.embedded += 1
        self.limits_seen.append(contrast_limits)
        lab = np.asarray(image)
        if lab.ndim == 3:
            lab = lab[..., 0]
        return _Token(lab.astype(np.int64), lab.shape, contrast_limits)

    def _one(self, tok: _Token, point) -> Prediction:
        h, w = tok.original_size
        r = min(h - 1, int(np.floor(point[0] + 0.5)))
        c = min(w - 1, int(np.floor(point[1] + 0.5)))
        obj = int(tok.labels[r, c])
        if obj == 0:
            logits = np.full((3, h, w), self.outside, np.float32)
            return Prediction(logits > 0, np.full(3, self.miss_score), logits)
        if self.candidates is not None:
            cands = self.candidates(tok.labels, obj)
            logits = np.stack([c[1] for c in cands]).astype(np.float32)
            masks = np.stack([c[0] for c in cands])
            return Prediction(masks, np.asarray([c[2] for c in cands], float), logits)
        m = tok.labels == obj
        logits = np.where(m, self.inside, self.outside).astype(np.float32)
        logits = np.repeat(logits[None], 3, axis=0)
        return Prediction(logits > 0, np.ones(3), logits)

    def predict(self, embedding, points=None, labels=None, box=None, mask=None, multimask=True):
        self.predict_calls += 1
        return self._one(embedding, np.asarray(points, float).reshape(-1, 2)[0])

    def predict_batch(
        self,
        embedding,
        points=None,
        labels=None,
        boxes=None,
        masks=None,
        multimask=True,
        upscale=True,
    ):
        self.batch_calls += 1
        return [self._one(embedding, np.asarray(p, float).reshape(-1, 2)[0]) for p in points]

    def upscale(self, embedding, logits):
        self.upscale_calls += 1
        return np.asarray(logits)


class _PredictOnly:
    """The oracle without ``predict_batch`` or ``upscale`` (the protocol's minimum)."""

    def __init__(self):
        self.oracle = _Oracle2D()

    def embed(self, image, *, contrast_limits=None):
        return self.oracle.embed(image, contrast_limits=contrast_limits)

    def predict(self, embedding, points=None, labels=None, box=None, mask=None, multimask=True):
        return self.oracle.predict(embedding, points, labels, box, mask, multimask)


class _BatchNoUpscale(_PredictOnly):
    """``predict_batch`` without an ``upscale`` argument: full-resolution masks only."""

    def predict_batch(
        self, embedding, points=None, labels=None, boxes=None, masks=None, multimask=True
    ):
        return [self.oracle._one(embedding, np.asarray(p, float).reshape(-1, 2)[0]) for p in points]


# --------------------------------------------------------------------------- data


def _disks_image(shape=(128, 128)) -> np.ndarray:
    """Disks and ellipses of several sizes, some touching, radius >= 5 px."""
    lab = np.zeros(shape, np.int32)
    specs = [
        ("disk", (20, 20), 9),
        ("disk", (20, 38), 9),  # touches the first one
        ("disk", (60, 25), 14),
        ("ellipse", (100, 30), (8, 18)),
        ("disk", (30, 90), 6),
        ("disk", (30, 102), 6),  # touches the previous one
        ("ellipse", (80, 90), (20, 11)),
        ("disk", (110, 110), 5),
    ]
    for i, (kind, centre, size) in enumerate(specs, start=1):
        if kind == "disk":
            rr, cc = disk(centre, size, shape=shape)
        else:
            rr, cc = ellipse(centre[0], centre[1], size[0], size[1], shape=shape)
        lab[rr, cc] = i
    return lab


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are the same instances up to renumbering (0 = 0)."""
    if a.shape != b.shape:
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]).astype(np.int64), axis=1)
    fa, fb = pairs
    if ((fa == 0) != (fb == 0)).any():
        return False
    return len(np.unique(fa)) == len(np.unique(fb)) == pairs.shape[1]


def _check_records(res: EverythingResult) -> None:
    labels = res.labels
    assert labels.dtype == np.uint32
    ids = np.unique(labels)
    ids = ids[ids > 0]
    assert ids.tolist() == list(range(1, len(res.objects) + 1))
    for rec in res.objects:
        m = labels == rec.id
        assert rec.area == m.sum()
        rows, cols = np.nonzero(m)
        assert rec.bbox == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)


# --------------------------------------------------------------------------- 2D exact


@pytest.mark.parametrize("points_per_batch", [7, 64], ids=["batch7", "batch64"])
def test_oracle_returns_exactly_the_ground_truth(points_per_batch):
    gt = _disks_image()
    oracle = _Oracle2D()
    res = segment_everything(
        gt,
        predictor=oracle,
        points_per_side=32,
        points_per_batch=points_per_batch,
        contrast_limits=(0, 10),
    )
    assert _same_partition(res.labels, gt)
    assert len(res.objects) == gt.max()
    _check_records(res)
    for rec in res.objects:
        assert rec.predicted_iou == 1.0 and rec.stability_score == 1.0
    # batched decoding: one call per batch, never one per point; one embedding
    assert oracle.predict_calls == 0
    assert oracle.batch_calls == math.ceil(32 * 32 / points_per_batch)
    assert oracle.embedded == 1
    assert res.stats["prompts"] == 1024 and res.stats["candidates"] == 3072


def test_ids_follow_raster_order_of_first_pixel():
    gt = _disks_image()
    res = segment_everything(gt, predictor=_Oracle2D(), points_per_side=32)
    first = [np.flatnonzero(res.labels.ravel() == i)[0] for i in range(1, len(res.objects) + 1)]
    assert first == sorted(first)


@pytest.mark.parametrize("cls", [_PredictOnly, _BatchNoUpscale], ids=["predict", "batch-full"])
def test_predictors_without_batch_or_upscale(cls):
    gt = _disks_image()
    res = segment_everything(gt, predictor=cls(), points_per_side=32)
    assert _same_partition(res.labels, gt)


def test_thousands_of_tiny_objects_in_bounded_memory():
    import tracemalloc

    lab = np.zeros((240, 240), np.int64)
    k = 0
    for r in range(2, 240, 6):
        for c in range(2, 240, 6):
            k += 1
            lab[r : r + 3, c : c + 3] = k
    tracemalloc.start()
    try:
        res = segment_everything(
            lab, predictor=_Oracle2D(), points_per_side=40, points_per_batch=16, min_area=4
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(res.objects) == k == 1600
    assert _same_partition(res.labels, lab)
    # the stand-in's own batch of 16 x 3 full-size logits is ~14 MB; 1600 dense
    # (240, 240) masks alone would take 92 MB, the compact masks take ~1 MB
    assert peak < 80e6


def test_low_res_filtering_upscales_only_kept_masks():
    gt = _disks_image()
    oracle = _Oracle2D()
    res = segment_everything(gt, predictor=oracle, points_per_side=16, points_per_batch=256)
    # one batch; background points give empty masks that are never upscaled
    assert oracle.batch_calls == 1
    assert res.stats["passed_filters"] < res.stats["candidates"]
    assert oracle.upscale_calls == math.ceil(res.stats["passed_filters"] / 8)


def _with_flags(low_score=(), blurry=(), score=0.5):
    def candidates(labels, obj):
        m = labels == obj
        # blurry: |logit| < offset inside, so the +offset mask is empty
        logits = np.where(m, 0.5 if obj in blurry else 10.0, -10.0)
        s = score if obj in low_score else 0.95
        return [(m, logits, s)] * 3

    return candidates


@pytest.mark.parametrize(
    ("low_score", "blurry"),
    [((1, 4), ()), ((), (2, 7)), ((3,), (5,))],
    ids=["iou", "stability", "both"],
)
def test_filters_drop_low_iou_and_unstable_masks(low_score, blurry):
    gt = _disks_image()
    oracle = _Oracle2D(candidates=_with_flags(low_score, blurry))
    res = segment_everything(gt, predictor=oracle, points_per_side=32)
    dropped = set(low_score) | set(blurry)
    kept_gt = np.where(np.isin(gt, list(dropped)), 0, gt)
    assert _same_partition(res.labels, kept_gt)


def test_stability_uses_the_offset():
    gt = _disks_image()
    # logits +2 inside: stable for offset 1, unstable for offset 3
    oracle = _Oracle2D(inside=2.0, outside=-10.0)
    assert len(segment_everything(gt, predictor=oracle, stability_offset=1.0).objects) == 8
    assert len(segment_everything(gt, predictor=oracle, stability_offset=3.0).objects) == 0


def test_multimask_candidates_compete():
    gt = _disks_image()

    def candidates(labels, obj):
        m = labels == obj
        # a part (low score), the object, and the object merged with its neighbours
        part = m & (np.cumsum(m, axis=1) <= 3)
        grown = np.zeros_like(m)
        from scipy import ndimage

        near = np.unique(labels[ndimage.binary_dilation(m, iterations=2)])
        grown = np.isin(labels, near[near > 0])
        return [
            (part, np.where(part, 10.0, -10.0), 0.6),
            (m, np.where(m, 10.0, -10.0), 0.97),
            (grown, np.where(grown, 10.0, -10.0), 0.9),
        ]

    res = segment_everything(gt, predictor=_Oracle2D(candidates=candidates), points_per_side=32)
    assert _same_partition(res.labels, gt)


def test_small_object_inside_large_one_is_kept():
    big = np.zeros((96, 96), bool)
    big[disk((48, 48), 35, shape=big.shape)] = True
    small = np.zeros_like(big)
    small[disk((48, 48), 8, shape=big.shape)] = True
    image = big.astype(np.int64) + small  # 1 = ring, 2 = nucleolus

    def candidates(labels, obj):
        m = big if obj == 1 else small  # the big mask covers the small one
        return [(m, np.where(m, 10.0, -10.0), 0.95)] * 3

    res = segment_everything(image, predictor=_Oracle2D(candidates=candidates), points_per_side=16)
    assert len(res.objects) == 2
    assert _same_partition(res.labels, image)
    areas = sorted(r.area for r in res.objects)
    assert areas == [small.sum(), big.sum() - small.sum()]


def test_sub_parts_inside_a_better_whole_are_dropped():
    """SAM-like multimask output: two halves (sub-parts) score below the whole object."""
    gt = _disks_image()

    def candidates(labels, obj):
        m = labels == obj
        cols = np.flatnonzero(m.any(axis=0))
        left = m.copy()
        left[:, cols[len(cols) // 2] :] = False
        right = m & ~left
        return [
            (left, np.where(left, 10.0, -10.0), 0.85),
            (right, np.where(right, 10.0, -10.0), 0.85),
            (m, np.where(m, 10.0, -10.0), 0.95),
        ]

    oracle = _Oracle2D(candidates=candidates)
    res = segment_everything(gt, predictor=oracle, points_per_side=32)
    assert _same_partition(res.labels, gt)
    assert res.stats["after_containment"] == res.stats["after_mask_dedup"] - 2 * 8
    # without the rule the halves win their pixels and each object is split in two
    split = segment_everything(gt, predictor=oracle, points_per_side=32, containment_thresh=None)
    assert len(split.objects) == 2 * len(res.objects) == 16
    assert split.stats["after_containment"] == split.stats["after_mask_dedup"]


def test_holes_filled_and_islands_removed():
    lab = np.zeros((64, 64), np.int64)
    lab[10:40, 10:40] = 1
    lab[20:22, 20:22] = 0  # a 4-pixel hole
    lab[50:52, 50:52] = 1  # a 4-pixel island of the same object

    res = segment_everything(lab, predictor=_Oracle2D(), points_per_side=16, min_area=9)
    assert len(res.objects) == 1
    expected = np.zeros_like(lab)
    expected[10:40, 10:40] = 1
    assert _same_partition(res.labels, expected)
    res = segment_everything(lab, predictor=_Oracle2D(), points_per_side=16, min_area=0)
    assert _same_partition(res.labels, lab)


@pytest.mark.parametrize(
    ("min_area", "max_area", "expected"),
    [(0, None, 3), (50, None, 2), (0, 500, 2), (50, 500, 1)],
    ids=["all", "min", "max", "both"],
)
def test_area_limits(min_area, max_area, expected):
    lab = np.zeros((64, 64), np.int64)
    lab[2:6, 2:6] = 1  # 16 px
    lab[10:20, 10:20] = 2  # 100 px
    lab[30:60, 30:60] = 3  # 900 px
    res = segment_everything(
        lab, predictor=_Oracle2D(), points_per_side=32, min_area=min_area, max_area=max_area
    )
    assert len(res.objects) == expected


@pytest.mark.parametrize(
    "image",
    [np.zeros((64, 64), np.uint16), np.full((64, 64), 7, np.uint8), np.full((48, 64), 2.5)],
    ids=["zeros", "constant-uint8", "constant-float"],
)
def test_empty_or_constant_slice_gives_no_objects(image):
    oracle = _Oracle2D()
    res = segment_everything(image, predictor=oracle)
    assert res.objects == [] and res.labels.shape == image.shape and not res.labels.any()
    assert res.labels.dtype == np.uint32
    assert oracle.embedded == 0


@pytest.mark.parametrize(
    ("values", "limits", "flat"),
    [
        ([np.nan, np.nan], (0, 1), True),
        ([5.0, np.nan], (0, 10), False),  # NaN is shown as the low end
        ([5.0, 7.0], (8, 10), True),  # both below the range
        ([5.0, 7.0], (6, 10), False),
        ([3.0, 3.0], (3, 3), True),
    ],
    ids=["nan", "nan-and-value", "below", "straddles", "empty-range"],
)
def test_is_flat(values, limits, flat):
    from napari_sam.everything._core import is_flat

    image = np.resize(np.asarray(values, np.float32), (16, 16))
    assert is_flat(image, limits) is flat


def test_slice_flattened_by_contrast_limits_gives_no_objects():
    lab = _disks_image()
    res = segment_everything(lab, predictor=_Oracle2D(), contrast_limits=(20, 30))
    assert res.objects == []


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_midway_raises_and_returns_nothing(kind):
    gt = _disks_image()
    event = threading.Event()
    cancel = event if kind == "event" else event.is_set
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if done == 3:
            event.set()

    oracle = _Oracle2D()
    with pytest.raises(Cancelled):
        segment_everything(
            gt, predictor=oracle, points_per_batch=64, progress=progress, cancel=cancel
        )
    assert calls[-1][0] == 3 and calls[-1][1] == 1 + 16
    assert oracle.batch_calls == 2  # stopped before the third batch


def test_cancel_before_start():
    event = threading.Event()
    event.set()
    oracle = _Oracle2D()
    with pytest.raises(Cancelled):
        segment_everything(_disks_image(), predictor=oracle, cancel=event)
    assert oracle.embedded == 0


def test_progress_counts_embedding_and_batches():
    calls = []
    segment_everything(
        _disks_image(),
        predictor=_Oracle2D(),
        points_per_side=10,
        points_per_batch=30,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(i, 5) for i in range(1, 6)]


def test_crop_layers_find_objects_between_grid_points():
    shape = (96, 96)
    full_pts = point_grid(2, shape)  # (24, 24), (24, 72), ...
    crops = crop_boxes(shape, 1, 0.25)
    assert len(crops) == 5
    lab = np.zeros(shape, np.int64)
    # a big object under a full-image grid point
    lab[disk(tuple(full_pts[0]), 12, shape=shape)] = 1
    # small objects under crop grid points only, away from crop edges
    k = 2
    for _, box in crops[1:]:
        pts = point_grid(2, (box[2] - box[0], box[3] - box[1])) + box[:2]
        for p in pts:
            if lab[int(p[0]), int(p[1])] == 0 and min(np.abs(full_pts - p).max(1)) > 6:
                rr, cc = disk(tuple(p), 3, shape=shape)
                inside = (rr > box[0] + 2) & (rr < box[2] - 3)
                inside &= (cc > box[1] + 2) & (cc < box[3] - 3)
                if inside.all() and not lab[rr, cc].any():
                    lab[rr, cc] = k
                    k += 1
    assert k > 4
    oracle = _Oracle2D()
    no_crop = segment_everything(lab, predictor=oracle, points_per_side=2, min_area=4)
    assert len(no_crop.objects) == 1
    oracle = _Oracle2D()
    with_crop = segment_everything(
        lab,
        predictor=oracle,
        points_per_side=2,
        min_area=4,
        crop_layers=1,
        crop_overlap_ratio=0.25,
    )
    assert oracle.embedded == 5
    assert _same_partition(with_crop.labels, lab)


def test_crops_drop_masks_cut_by_the_crop():
    lab = np.zeros((96, 96), np.int64)
    lab[30:66, 30:66] = 1  # spans all four layer-1 crops
    oracle = _Oracle2D()
    res = segment_everything(lab, predictor=oracle, points_per_side=8, crop_layers=1)
    assert len(res.objects) == 1 and _same_partition(res.labels, lab)


def test_same_contrast_limits_for_all_crops():
    lab = _disks_image().astype(np.uint16) * 100
    oracle = _Oracle2D()
    segment_everything(lab, predictor=oracle, points_per_side=4, crop_layers=1)
    assert len(oracle.limits_seen) == 5 and len(set(oracle.limits_seen)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points_per_side": 0}, "points_per_side"),
        ({"box_nms_thresh": 1.5}, "box_nms_thresh"),
        ({"min_area": 10, "max_area": 5}, "max_area"),
        ({"crop_layers": -1}, "crop_layers"),
        ({"contrast_limits": (5, 1)}, "contrast_limits"),
        ({"containment_thresh": 0.0}, "containment_thresh"),
        ({"containment_thresh": 1.5}, "containment_thresh"),
    ],
    ids=["grid", "nms", "area", "crops", "limits", "containment-0", "containment-1.5"],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        segment_everything(_disks_image(), predictor=_Oracle2D(), **kwargs)


def test_not_a_predictor_raises():
    with pytest.raises(TypeError, match="embed"):
        segment_everything(_disks_image(), predictor=object())


# --------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compact_mask_roundtrip(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((30, 40)) < 0.4
    m[:3] = False
    cm = CompactMask.from_crop(m, (5, 7))
    assert cm.area == m.sum()
    full = np.zeros((50, 60), bool)
    full[5:35, 7:47] = m
    assert np.array_equal(cm.to_dense((50, 60)), full)
    rows, cols = np.nonzero(full)
    assert cm.bbox == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    assert np.array_equal(cm.shifted(1, 2).to_dense((51, 62))[1:, 2:], full)


def test_compact_mask_empty():
    cm = CompactMask.from_crop(np.zeros((4, 4), bool), (2, 3))
    assert cm.area == 0 and cm.shape == (0, 0)
    assert not cm.to_dense((8, 8)).any()


def test_mask_iou_matches_dense():
    rng = np.random.default_rng(3)
    for _ in range(5):
        a = rng.random((20, 20)) < 0.5
        b = rng.random((20, 20)) < 0.5
        ca = CompactMask.from_crop(a[2:15, 1:18], (2, 1))
        cb = CompactMask.from_crop(b[5:20, 4:20], (5, 4))
        da, db = ca.to_dense((20, 20)), cb.to_dense((20, 20))
        expected = (da & db).sum() / (da | db).sum()
        assert mask_iou(ca, cb) == pytest.approx(expected)


def test_clean_mask_holes_and_islands():
    m = np.zeros((20, 20), bool)
    m[2:12, 2:12] = True
    m[5, 5] = False  # 1-px hole
    m[6:9, 8:11] = False  # 9-px hole
    m[15:17, 15:17] = True  # 4-px island
    out = clean_mask(m, 5)
    assert out[5, 5] and not out[7, 9] and not out[15:17, 15:17].any()
    assert out[2:12, 2:12].sum() == 100 - 9
    # background touching the crop border is never a hole
    ring = np.ones((6, 6), bool)
    ring[0, 2:4] = False
    assert np.array_equal(clean_mask(ring, 10), ring)


def test_mask_dedup_catches_duplicates_that_box_nms_misses():
    base = np.zeros((40, 40), bool)
    base[10:30, 10:30] = True
    stray = base.copy()
    stray[0, 0] = True  # one stray pixel blows up the box: box IoU 0.44, mask IoU 0.998
    other = np.zeros_like(base)
    other[12:20, 25:38] = True
    cands = Candidates()
    for m, s in [(base, 0.9), (stray, 0.8), (other, 0.7)]:
        cands.add(CompactMask.from_crop(m), s, 1.0, 0)
    out = mask_dedup(cands, 0.7)
    assert out.iou == [0.9, 0.7]


def test_resolve_overlaps_smallest_wins_and_hidden_masks_drop():
    shape = (40, 40)
    big = np.zeros(shape, bool)
    big[5:35, 5:35] = True
    small = np.zeros(shape, bool)
    small[10:15, 10:15] = True
    union = np.zeros(shape, bool)
    union[20:30, 0:40] = True  # covered by the two parts below, except a thin strip
    a = np.zeros(shape, bool)
    a[20:30, 0:21] = True
    b = np.zeros(shape, bool)
    b[20:30, 21:40] = True
    masks = [CompactMask.from_crop(m) for m in (big, small, union, a, b)]
    index, kept = resolve_overlaps(masks, np.ones(5), shape, 4, 0.2)
    assert (index[10:15, 10:15] == 1).all()  # small inside big stays
    assert 2 not in kept  # the union of a and b is hidden
    assert (index[20:30, 0:21] == 3).all() and (index[20:30, 21:40] == 4).all()
    assert set(np.unique(index)) == {-1, 0, 1, 3, 4}


def test_drop_contained_parts_keeps_better_nested_and_partial_overlaps():
    shape = (60, 60)

    def box(r0, c0, r1, c1):
        m = np.zeros(shape, bool)
        m[r0:r1, c0:c1] = True
        return m

    specs = [
        (box(5, 5, 35, 35), 0.9),  # 0: the whole object
        (box(8, 8, 18, 30), 0.8),  # 1: a part of 0 (fully inside, worse score): dropped
        (box(20, 10, 30, 20), 0.95),  # 2: nested but better scored (a nucleolus): kept
        (box(28, 20, 40, 30), 0.7),  # 3: 7/12 inside 0 (< 0.8): kept
        (box(45, 45, 55, 58), 0.6),  # 4: elsewhere: kept
        (box(46, 46, 50, 50), 0.6),  # 5: inside 4 with the same score, but less stable: dropped
    ]
    cands = Candidates()
    for k, (m, score) in enumerate(specs):
        cands.add(CompactMask.from_crop(m), score, 0.9 if k != 5 else 0.5, 0)
    out = drop_contained_parts(cands, 0.8)
    assert out.iou == [0.9, 0.95, 0.7, 0.6]
    assert [m.bbox for m in out.masks] == [
        (5, 5, 35, 35),
        (20, 10, 30, 20),
        (28, 20, 40, 30),
        (45, 45, 55, 58),
    ]
    # a lower threshold also drops the partly inside mask 3; None keeps everything
    assert drop_contained_parts(cands, 0.5).iou == [0.9, 0.95, 0.6]
    assert len(drop_contained_parts(cands, None)) == len(cands)
    # a dropped container removes none of its parts: the sliver lies inside the
    # dropped middle mask only (a quarter of it lies inside the whole)
    chain = Candidates()
    for m, score in (
        (box(0, 0, 40, 40), 0.9),  # whole
        (box(0, 10, 40, 46), 0.8),  # 5/6 inside the whole, worse: dropped
        (box(10, 38, 20, 46), 0.7),  # inside the middle mask only: kept
    ):
        chain.add(CompactMask.from_crop(m), score, 0.9, 0)
    assert drop_contained_parts(chain, 0.8).iou == [0.9, 0.7]


# --------------------------------------------------------------------------- 3D


def _cylinders(z=8, shape=(64, 64)):
    """Objects spanning different z ranges, some touching."""
    lab = np.zeros((z, *shape), np.int32)
    for zz in range(0, 6):
        lab[zz][disk((20, 20), 10, shape=shape)] = 1
    for zz in range(2, 8):
        lab[zz][disk((20, 41), 10, shape=shape)] = 2  # touches object 1
    for zz in range(3, 5):
        lab[zz][disk((48, 45), 7, shape=shape)] = 3
    for zz in range(0, 8):
        lab[zz][disk((48, 16 + zz), 8, shape=shape)] = 4  # drifts in x
    return lab


def test_stack_links_objects_through_z():
    gt = _cylinders()
    oracle = _Oracle2D()
    res = segment_everything_stack(gt, predictor=oracle, points_per_side=16, min_z_extent=1)
    assert res.labels.shape == gt.shape and res.labels.dtype == np.uint32
    assert _same_partition(res.labels, gt)
    assert oracle.embedded == gt.shape[0]
    by_id = {r.id: r for r in res.objects}
    assert sorted(r.z_range for r in by_id.values()) == [(0, 6), (0, 8), (2, 8), (3, 5)]
    for r in res.objects:
        m = res.labels == r.id
        assert r.volume == m.sum()
        assert r.n_slices == r.z_range[1] - r.z_range[0]
    assert res.objects_per_slice == [int(len(np.unique(s)) - 1) for s in gt]


def test_stack_closes_a_one_slice_gap():
    gt = _cylinders()
    image = gt.copy()
    image[3][gt[3] == 1] = 0  # the 2D pass "misses" object 1 on slice 3
    res = segment_everything_stack(image, predictor=_Oracle2D(), points_per_side=16)
    ids_1 = {int(np.unique(res.labels[z][gt[z] == 1])[0]) for z in (2, 4)}
    assert len(ids_1) == 1
    (oid,) = ids_1
    expected = (gt[2] == 1) & (gt[4] == 1)
    assert np.array_equal(res.labels[3] == oid, expected)
    # without gap closing the two parts are separate objects
    res = segment_everything_stack(
        image, predictor=_Oracle2D(), points_per_side=16, max_gap=0, min_z_extent=1
    )
    assert len({int(np.unique(res.labels[z][gt[z] == 1])[0]) for z in (2, 4)}) == 2
    # without filling, the gap stays empty but the id is shared
    res = segment_everything_stack(
        image, predictor=_Oracle2D(), points_per_side=16, fill_gaps=False
    )
    assert not res.labels[3][gt[3] == 1].any()
    assert len({int(np.unique(res.labels[z][gt[z] == 1])[0]) for z in (2, 4)}) == 1


@pytest.mark.parametrize(("min_z", "n"), [(1, 5), (2, 4), (3, 3), (7, 1)], ids=str)
def test_stack_min_z_extent(min_z, n):
    gt = _cylinders()
    gt[7][disk((5, 58), 4, shape=gt.shape[1:])] = 5  # one-slice object
    res = segment_everything_stack(
        gt, predictor=_Oracle2D(), points_per_side=16, min_z_extent=min_z
    )
    assert len(res.objects) == n


class _SliceOnly:
    """Array-like that only allows reading one slice at a time (counts the reads)."""

    def __init__(self, data):
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if len(key) != 1:
                raise AssertionError(f"read more than one slice: {key}")
            key = key[0]
        if not isinstance(key, (int, np.integer)):
            raise AssertionError(f"read more than one slice: {key}")
        self.reads.append(int(key))
        return self.data[key]


@pytest.mark.parametrize("backend", ["numpy", "dask", "zarr", "slice-only"])
def test_stack_from_lazy_arrays(backend):
    gt = _cylinders().astype(np.uint16)
    if backend == "dask":
        import dask.array as da

        stack = da.from_array(gt, chunks=(1, 64, 64))
    elif backend == "zarr":
        import zarr

        stack = zarr.create_array(store={}, shape=gt.shape, dtype=gt.dtype, chunks=(1, 64, 64))
        stack[:] = gt
    elif backend == "slice-only":
        stack = _SliceOnly(gt)
    else:
        stack = gt
    res = segment_everything_stack(
        stack, predictor=_Oracle2D(), points_per_side=16, min_z_extent=1, contrast_limits=(0, 10)
    )
    assert _same_partition(res.labels, gt)
    if backend == "slice-only":
        assert stack.reads == list(range(gt.shape[0]))


def test_stack_uses_one_contrast_range_for_all_slices():
    from napari_sam.normalize import stack_intensity_range

    gt = _cylinders().astype(np.uint16) * 1000
    oracle = _Oracle2D()
    res = segment_everything_stack(gt, predictor=oracle, points_per_side=8)
    assert len(set(oracle.limits_seen)) == 1
    assert oracle.limits_seen[0] == stack_intensity_range(gt) == res.contrast_limits


@pytest.mark.parametrize("kind", ["dict", "callable", "list"])
def test_stack_uses_precomputed_embeddings(kind):
    gt = _cylinders()
    maker = _Oracle2D()
    embs = {z: maker.embed(gt[z]) for z in (1, 4, 6)}
    if kind == "callable":
        embeddings = embs.get
    elif kind == "list":
        embeddings = [embs.get(z) for z in range(5)]
    else:
        embeddings = embs
    oracle = _Oracle2D()
    res = segment_everything_stack(
        gt, predictor=oracle, points_per_side=16, min_z_extent=1, embeddings=embeddings
    )
    n_given = 3 if kind != "list" else 2
    assert oracle.embedded == gt.shape[0] - n_given
    assert _same_partition(res.labels, gt)


def test_stack_cancel_and_progress():
    gt = _cylinders()
    event = threading.Event()
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if done == 2:
            event.set()

    with pytest.raises(Cancelled):
        segment_everything_stack(
            gt, predictor=_Oracle2D(), points_per_side=8, progress=progress, cancel=event
        )
    assert calls == [(1, 8), (2, 8)]


def test_stack_with_shared_stand_in_oracle():
    from stand_ins import OraclePredictor

    gt = _cylinders().astype(np.uint16)
    res = segment_everything_stack(
        gt, predictor=OraclePredictor(gt), points_per_side=16, min_z_extent=1
    )
    assert _same_partition(res.labels, gt)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"link_iou": 0}, ValueError),
        ({"min_z_extent": 0}, ValueError),
        ({"max_gap": -1}, ValueError),
        ({"embedding": None}, TypeError),
    ],
    ids=["link", "extent", "gap", "embedding"],
)
def test_stack_bad_parameters(kwargs, error):
    with pytest.raises(error):
        segment_everything_stack(_cylinders(), predictor=_Oracle2D(), **kwargs)


def test_stack_rejects_2d_input():
    with pytest.raises(ValueError, match="segment_everything"):
        segment_everything_stack(_disks_image(), predictor=_Oracle2D())


# --------------------------------------------------------------------------- real model code


@pytest.fixture(scope="module")
def tiny_predictor():
    import torch

    from napari_sam.model.sam import build_sam
    from napari_sam.predictor import Predictor

    torch.manual_seed(0)
    return Predictor(build_sam("vit_tiny"), precision="float32")


@pytest.mark.numerics
@pytest.mark.parametrize("shape", [(256, 256), (96, 160)], ids=["square", "wide"])
def test_fast_decoder_equals_predict_batch(tiny_predictor, shape):
    import torch

    from napari_sam.everything._decoder import PointDecoder

    rng = np.random.default_rng(0)
    image = (rng.random(shape) * 255).astype(np.uint8)
    emb = tiny_predictor.embed(image)
    pts = point_grid(3, shape)[:, None, :]
    ref = tiny_predictor.predict_batch(emb, points=pts, labels=np.ones((9, 1)), upscale=False)
    dec = PointDecoder(tiny_predictor.model, emb.features)
    coords = torch.as_tensor(emb.to_model_frame(pts), dtype=torch.float32)
    stage = dec.decode_points(coords, torch.ones(9, 1, dtype=torch.int64))
    logits = dec.masks(stage).numpy()
    ref_logits = np.stack([p.logits for p in ref])
    assert np.allclose(logits, ref_logits, atol=1e-4 * max(1.0, np.abs(ref_logits).max()))
    assert np.allclose(stage.iou.numpy(), np.stack([p.scores for p in ref]), atol=1e-5)
    part = dec.masks(stage, torch.tensor([2, 5])).numpy()
    assert_close_rounding(part, logits[[2, 5]], reduction_length=emb.features.shape[1])
    raw = dec.raw_masks(stage)
    assert torch.equal(dec.to_raw(dec.to_spatial(raw)), raw)


@pytest.mark.parametrize("shape", [(64, 64), (96, 160), (70, 45)], ids=["square", "wide", "odd"])
def test_region_upscale_equals_predictor_upscale(tiny_predictor, shape):
    import torch

    from napari_sam.everything._upscale import RegionUpscaler

    rng = np.random.default_rng(4)
    emb = tiny_predictor.embed((rng.random(shape) * 255).astype(np.uint8))
    up = RegionUpscaler.for_predictor(tiny_predictor, emb, (64, 64), 0.0)
    assert up is not None
    yy, xx = np.mgrid[:64, :64]
    for cy, cx, r, inside in [
        (10, 12, 5, True),
        (30, 20, 9, True),
        (2, 2, 3, True),
        (40, 62, 2, False),
    ]:
        blob = 4.0 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2 * 4.0
        logits = torch.as_tensor(np.maximum(blob, -6.0) + rng.normal(0, 0.05, blob.shape)).float()
        full = (tiny_predictor.upscale(emb, logits[None])[0] > 0).numpy()
        crop, (r0, c0) = up.crop(logits)
        dense = np.zeros(shape, bool)
        dense[r0 : r0 + crop.shape[0], c0 : c0 + crop.shape[1]] = crop
        assert np.array_equal(dense, full)
        assert full.any() == (inside or shape == (64, 64))  # (40, 62) is padding unless square
    crop, _ = up.crop(torch.full((64, 64), -1.0))
    assert crop.shape == (0, 0)


def test_real_model_end_to_end(tiny_predictor):
    rng = np.random.default_rng(1)
    image = rng.normal(100, 10, (64, 64)).astype(np.float32)
    image[disk((20, 20), 10)] += 200
    image[disk((44, 40), 12)] += 120
    res = segment_everything(image, predictor=tiny_predictor, points_per_side=8)
    assert res.labels.shape == (64, 64) and res.labels.dtype == np.uint32
    _check_records(res)
    assert res.stats["prompts"] == 64 and res.stats["candidates"] == 192
    # permissive thresholds so that masks are kept: fast path == predict_batch path
    loose = {"pred_iou_thresh": -100.0, "stability_score_thresh": 0.0, "min_area": 4}
    fast = segment_everything(image, predictor=tiny_predictor, points_per_side=8, **loose)
    slow = segment_everything(
        image, predictor=tiny_predictor, points_per_side=8, fast_decoder=False, **loose
    )
    _check_records(fast)
    assert fast.stats["passed_filters"] > 0
    assert fast.stats == slow.stats
    assert np.array_equal(fast.labels, slow.labels)


def test_real_model_stack(tiny_predictor):
    rng = np.random.default_rng(2)
    stack = rng.normal(100, 10, (3, 48, 48)).astype(np.float32)
    res = segment_everything_stack(
        stack,
        predictor=tiny_predictor,
        points_per_side=4,
        pred_iou_thresh=-100.0,
        stability_score_thresh=0.0,
        min_z_extent=1,
    )
    assert res.labels.shape == (3, 48, 48) and res.labels.dtype == np.uint32
    ids = np.unique(res.labels)
    assert ids[ids > 0].tolist() == list(range(1, len(res.objects) + 1))


def test_unset_options_default_to_the_models_recommendation():
    from napari_sam.everything._params import MODEL_DEFAULTS, EverythingParams
    from napari_sam.model.registry import recommended_everything

    micro = {
        "pred_iou_thresh": 0.6,
        "stability_score_thresh": 0.85,
        "box_nms_thresh": 0.5,
        "containment_thresh": 0.5,
    }
    assert recommended_everything("micro") == micro
    assert recommended_everything("vit_b") == {} == recommended_everything("/a/model.pt")
    assert MODEL_DEFAULTS == {
        "pred_iou_thresh": 0.8,
        "stability_score_thresh": 0.9,
        "box_nms_thresh": 0.7,
        "containment_thresh": 0.8,
    }
    unset = EverythingParams()
    assert unset.pred_iou_thresh is None and unset.containment_thresh == "auto"
    for model, expected in (("micro", micro), ("vit_b", MODEL_DEFAULTS), (None, MODEL_DEFAULTS)):
        resolved = unset.for_model(model)
        assert {name: getattr(resolved, name) for name in expected} == expected
    given = EverythingParams(
        pred_iou_thresh=0.9, stability_score_thresh=0.95, box_nms_thresh=0.6,
        containment_thresh=None,
    ).for_model("micro")
    assert (given.pred_iou_thresh, given.stability_score_thresh) == (0.9, 0.95)
    assert (given.box_nms_thresh, given.containment_thresh) == (0.6, None)  # None: rule off
    with pytest.raises(ValueError, match="containment_thresh"):
        EverythingParams(containment_thresh="sometimes")


def test_fast_decoder_prompts_per_call_bound_memory():
    from napari_sam.everything._decoding import (
        FAST_VALUES_PER_CALL,
        fast_prompts_per_call,
    )

    assert fast_prompts_per_call(4096, 256) == 8  # SAM: 8 x 4 MiB of image tokens
    assert fast_prompts_per_call(1024, 64) == 32  # the bundled model: 32 x 256 KiB
    assert fast_prompts_per_call(16, 16) == 32
    assert fast_prompts_per_call(4096, 1024) == 8  # never fewer than 8
    assert FAST_VALUES_PER_CALL >= 32 * 1024 * 64
