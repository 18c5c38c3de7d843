"""Propagation through z, checked exactly with the oracle stand-in on synthetic labels."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_sam.propagation import (
    BENCHMARK_MODES,
    PROMPT_PARTS,
    SINGLE_OBJECT_ID,
    PropagationResult,
    SliceRecord,
    SliceUpdate,
    propagate,
    propagate_iter,
)
from napari_sam.propagation.prompts import PromptSettings, build_prompt, parse_prompt_mode
from stand_ins import OraclePredictor, ellipsoid_labels

Z, Y, X = 24, 64, 64


def _image(labels: np.ndarray, channels: int | None = None) -> np.ndarray:
    """A stack whose slices all differ (so the oracle can recognise them)."""
    z = np.arange(labels.shape[0], dtype=np.uint16)[:, None, None]
    img = labels.astype(np.uint16) * 100 + z
    if channels is not None:
        img = np.stack([img + c for c in range(channels)], axis=-1)
    return img


def _extent(mask3d: np.ndarray) -> tuple[int, int]:
    zs = np.flatnonzero(mask3d.any(axis=(1, 2)))
    return int(zs[0]), int(zs[-1])


def _cylinder(z0: int, z1: int, centre=(32, 32), radius=12, shape=(Z, Y, X)) -> np.ndarray:
    """Labels with one cylinder (id 1) on slices z0..z1 inclusive: no shrinking caps."""
    yy, xx = np.indices(shape[1:])
    disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    labels = np.zeros(shape, np.uint16)
    labels[z0 : z1 + 1][:, disk] = 1
    return labels


@pytest.fixture
def ellipsoid():
    labels = ellipsoid_labels((Z, Y, X), [((12, 32, 30), (8, 20, 16))])
    return labels, _image(labels)


def _accepted(records: list[SliceRecord], oid: int = SINGLE_OBJECT_ID) -> list[int]:
    return sorted(r.z for r in records if r.object_id == oid and r.accepted)


# ------------------------------------------------------------------ basics
@pytest.mark.parametrize("mode", BENCHMARK_MODES, ids=BENCHMARK_MODES)
def test_middle_seed_recovers_ellipsoid(ellipsoid, mode):
    labels, image = ellipsoid
    truth = labels == 1
    oracle = OraclePredictor(labels, image)
    result = propagate(image, {12: truth[12]}, oracle, prompt_mode=mode)
    assert isinstance(result, PropagationResult)
    got = result.mask_or_labels
    assert got.dtype == np.bool_ and got.shape == (Z, Y, X)
    lo, hi = _extent(got)
    true_lo, true_hi = _extent(truth)
    assert abs(lo - true_lo) <= 1 and abs(hi - true_hi) <= 1
    # every accepted slice is the true cross-section
    for z in range(lo, hi + 1):
        np.testing.assert_array_equal(got[z], truth[z])
    assert not got[:lo].any() and not got[hi + 1 :].any()
    assert result.cancelled is False
    statuses = {r.z: r.status for r in result.records}
    assert statuses[12] == "seed"
    assert statuses[lo - 1] == "vanished" and statuses[hi + 1] == "vanished"
    assert _accepted(result.records) == list(range(lo, hi + 1))
    # each slice embedded at most once, the seed slice never
    assert len(oracle.embedded) == len(set(oracle.embedded))
    assert 12 not in oracle.embedded


def test_records_and_updates_are_consistent(ellipsoid):
    labels, image = ellipsoid
    truth = labels == 1
    updates = list(propagate_iter(image, {12: truth[12]}, OraclePredictor(labels, image)))
    assert all(isinstance(u, SliceUpdate) for u in updates)
    first = updates[0]
    assert first.z == 12 and first.records[1].status == "seed"
    np.testing.assert_array_equal(first.masks[1], truth[12])
    for u in updates:
        rec = u.records[1]
        assert rec.z == u.z and rec.object_id == 1
        assert (1 in u.masks) == rec.accepted
        if rec.accepted:
            assert rec.area == int(u.masks[1].sum())
            assert u.masks[1].shape == (Y, X) and u.masks[1].dtype == np.bool_
    ok = [u.records[1] for u in updates if u.records[1].status == "ok"]
    assert all(r.score == 1.0 and 0.4 <= r.iou_with_previous <= 1.0 for r in ok)
    # breadth first: the two directions alternate
    assert [u.z for u in updates[1:5]] == [11, 13, 10, 14]


@pytest.mark.parametrize(
    ("direction", "side"), [("up", "up"), ("down", "down")], ids=["up", "down"]
)
def test_one_direction(ellipsoid, direction, side):
    labels, image = ellipsoid
    truth = labels == 1
    result = propagate(image, {12: truth[12]}, OraclePredictor(labels, image), direction=direction)
    lo, hi = _extent(result.mask_or_labels)
    true_lo, true_hi = _extent(truth)
    if side == "up":
        assert lo == 12 and abs(hi - true_hi) <= 1
    else:
        assert hi == 12 and abs(lo - true_lo) <= 1


def test_unknown_direction_lists_valid(ellipsoid):
    labels, image = ellipsoid
    with pytest.raises(ValueError, match="'both', 'up', 'down'"):
        propagate(image, {12: labels[12] == 1}, OraclePredictor(labels, image), direction="z+")


def test_stops_exactly_at_object_end():
    labels = _cylinder(5, 15)
    image = _image(labels)
    result = propagate(image, {10: labels[10] == 1}, OraclePredictor(labels, image))
    assert _extent(result.mask_or_labels) == (5, 15)
    stops = {r.z: r for r in result.records if r.status == "vanished"}
    assert set(stops) == {4, 16}
    assert stops[4].area == 0 and stops[4].score < 0.5


def test_stack_end_and_z_range():
    labels = _cylinder(0, Z - 1)
    image = _image(labels)
    oracle = OraclePredictor(labels, image)
    result = propagate(image, {10: labels[10] == 1}, oracle)
    assert _extent(result.mask_or_labels) == (0, Z - 1)
    statuses = {r.z: r.status for r in result.records}
    assert statuses[0] == "end" and statuses[Z - 1] == "end"
    assert all(statuses[z] == "ok" for z in range(1, Z - 1) if z != 10)

    oracle = OraclePredictor(labels, image)
    result = propagate(image, {10: labels[10] == 1}, oracle, z_range=(6, 15))
    assert _extent(result.mask_or_labels) == (6, 14)
    statuses = {r.z: r.status for r in result.records}
    assert statuses[6] == "z_range" and statuses[14] == "z_range"
    assert sorted(oracle.embedded) == [z for z in range(6, 15) if z != 10]

    result = propagate(image, {10: labels[10] == 1}, oracle, z_range=slice(None, 12))
    assert _extent(result.mask_or_labels) == (0, 11)


def test_stop_markers():
    labels = _cylinder(2, 20)
    image = _image(labels)
    seeds = {10: labels[10] == 1}
    oracle = OraclePredictor(labels, image)
    result = propagate(image, seeds, oracle, stop_markers={1: [14], None: [7]})
    assert _extent(result.mask_or_labels) == (8, 13)
    markers = sorted(r.z for r in result.records if r.status == "stop_marker")
    assert markers == [7, 14]
    assert 7 not in oracle.embedded and 14 not in oracle.embedded
    # a plain iterable applies to every object
    result = propagate(image, seeds, OraclePredictor(labels, image), stop_markers=[12])
    assert _extent(result.mask_or_labels) == (2, 11)


def test_two_keyframes_fill_gap_from_both_ends():
    labels = ellipsoid_labels((Z, Y, X), [((12, 32, 32), (10, 24, 24))])
    image = _image(labels)
    truth = labels == 1
    oracle = OraclePredictor(labels, image)
    updates = list(propagate_iter(image, {6: truth[6], 17: truth[17]}, oracle))
    order = [u.z for u in updates]
    assert order[:2] == [6, 17]  # the seeds
    gap = [z for z in order if 6 < z < 17]
    assert sorted(gap) == list(range(7, 17))
    # both ends advance: 7 and 16 come before the middle
    assert order.index(7) < order.index(11) and order.index(16) < order.index(11)
    assert all(len(u.records) == 1 for u in updates)  # one record per object and slice
    result = propagate(image, {6: truth[6], 17: truth[17]}, OraclePredictor(labels, image))
    np.testing.assert_array_equal(result.mask_or_labels[6:18], truth[6:18])
    assert sorted(oracle.embedded) == sorted(set(oracle.embedded))


def test_gap_odd_middle_slice_prompted_by_both_neighbours():
    labels = _cylinder(0, Z - 1)
    image = _image(labels)
    oracle = OraclePredictor(labels, image)
    seeds = {5: labels[5] == 1, 11: labels[11] == 1}  # gap 6..10, middle 8
    updates = list(propagate_iter(image, seeds, oracle, direction="both", z_range=(5, 12)))
    assert sorted(u.z for u in updates) == list(range(5, 12))
    assert [u.z for u in updates].count(8) == 1


def test_gap_with_one_direction_is_filled_from_one_side():
    labels = _cylinder(0, Z - 1)
    image = _image(labels)
    seeds = {5: labels[5] == 1, 11: labels[11] == 1}
    updates = list(propagate_iter(image, seeds, OraclePredictor(labels, image), direction="up"))
    zs = [u.z for u in updates[2:]]
    assert sorted(zs) == list(range(6, 11)) + list(range(12, Z))
    assert all(rec.z > 5 for u in updates[2:] for rec in u.records.values())


def test_several_objects_share_embeddings_and_batches():
    objects = [
        ((10, 16, 16), (7, 10, 10)),
        ((12, 16, 48), (9, 10, 10)),
        ((8, 48, 20), (5, 10, 12)),
        ((14, 46, 46), (6, 11, 11)),
    ]
    labels = ellipsoid_labels((Z, Y, X), objects)
    image = _image(labels)
    seeds = {i: {c[0]: labels[c[0]] == i} for i, (c, _) in enumerate(objects, start=1)}
    seeds[2] = {9: labels[9] == 2, 15: labels[15] == 2}  # two keyframes
    oracle = OraclePredictor(labels, image)
    result = propagate(image, seeds, oracle)
    assert result.mask_or_labels.dtype == np.uint8
    # each slice's embedding computed once for all objects
    assert len(oracle.embedded) == len(set(oracle.embedded))
    assert oracle.decoder_calls < oracle.prompts_decoded  # objects were batched
    for i in range(1, 5):
        truth = labels == i
        got = result.mask_or_labels == i
        lo, hi = _extent(got)
        true_lo, true_hi = _extent(truth)
        assert abs(lo - true_lo) <= 1 and abs(hi - true_hi) <= 1
        np.testing.assert_array_equal(got[lo : hi + 1], truth[lo : hi + 1])
    summary = result.summary()
    assert set(summary) == {1, 2, 3, 4}
    assert summary[2].voxels == int((result.mask_or_labels == 2).sum())


class _NoBatch:
    """The oracle without predict_batch: the engine must loop over predict."""

    def __init__(self, oracle):
        self.oracle = oracle
        self.embed = oracle.embed
        self.predict = oracle.predict


def test_predictor_without_predict_batch():
    labels = ellipsoid_labels((Z, Y, X), [((10, 16, 16), (7, 10, 10)), ((10, 46, 46), (7, 10, 10))])
    image = _image(labels)
    oracle = OraclePredictor(labels, image)
    seeds = {1: {10: labels[10] == 1}, 2: {10: labels[10] == 2}}
    result = propagate(image, seeds, _NoBatch(oracle))
    assert oracle.decoder_calls == oracle.prompts_decoded
    np.testing.assert_array_equal(result.mask_or_labels[4:17], labels[4:17])


# ------------------------------------------------------------ cancel, progress
@pytest.mark.parametrize("kind", ["event", "callable"], ids=["event", "callable"])
def test_cancel_midway_keeps_consistent_result(ellipsoid, kind):
    labels, image = ellipsoid
    truth = labels == 1
    event = threading.Event()
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if done == 4:
            event.set()

    cancel = event if kind == "event" else event.is_set
    out = np.zeros((Z, Y, X), np.uint16)
    result = propagate(
        image,
        {12: truth[12]},
        OraclePredictor(labels, image),
        out=out,
        label_id=3,
        progress=progress,
        cancel=cancel,
    )
    assert result.cancelled is True
    assert result.mask_or_labels is out
    accepted = _accepted(result.records)
    assert accepted == [10, 11, 12, 13]  # seed, then 11, 13, 10
    written = np.flatnonzero(out.any(axis=(1, 2)))
    assert written.tolist() == accepted
    for z in accepted:
        np.testing.assert_array_equal(out[z] == 3, truth[z])
    cancelled = sorted(r.z for r in result.records if r.status == "cancelled")
    assert cancelled == [9, 14]
    assert calls[-1][0] == 4


def test_progress_counts_to_total(ellipsoid):
    labels, image = ellipsoid
    calls = []
    propagate(
        image,
        {12: labels[12] == 1},
        OraclePredictor(labels, image),
        progress=lambda d, t: calls.append((d, t)),
    )
    done = [d for d, _ in calls]
    assert done == list(range(1, len(calls) + 1))
    assert all(d <= t for d, t in calls)
    assert calls[-1][0] == calls[-1][1]
    totals = [t for _, t in calls]
    assert totals == sorted(totals, reverse=True)  # the bound only shrinks


def test_iterator_can_be_abandoned(ellipsoid):
    labels, image = ellipsoid
    oracle = OraclePredictor(labels, image)
    it = propagate_iter(image, {12: labels[12] == 1}, oracle)
    next(it), next(it)
    it.close()
    assert oracle.embedded == [11]


# ------------------------------------------------------------ stacks & embeddings
class _CountingArray:
    """Array-like that records which slices were read."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


def test_dask_stack_reads_only_touched_slices():
    da = pytest.importorskip("dask.array")
    import dask

    labels = _cylinder(8, 13)
    image = _image(labels)
    loaded = []

    def load(z):
        loaded.append(z)
        return image[z]

    stack = da.stack(
        [da.from_delayed(dask.delayed(load)(z), (Y, X), image.dtype) for z in range(Z)]
    )
    result = propagate(
        stack, {10: labels[10] == 1}, OraclePredictor(labels, image), contrast_limits=(0, 300)
    )
    assert _extent(result.mask_or_labels) == (8, 13)
    assert sorted(loaded) == [7, 8, 9, 11, 12, 13, 14]


def test_zarr_stack_reads_only_touched_slices():
    zarr = pytest.importorskip("zarr")
    labels = _cylinder(8, 13)
    image = _image(labels)
    stack = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=image.shape, chunks=(1, Y, X), dtype=image.dtype
    )
    stack[:] = image
    counted = _CountingArray(stack)
    result = propagate(
        counted, {10: labels[10] == 1}, OraclePredictor(labels, image), contrast_limits=(0, 300)
    )
    assert _extent(result.mask_or_labels) == (8, 13)
    assert sorted(counted.reads) == [7, 8, 9, 11, 12, 13, 14]
    # the "faded" rule also reads the seed slice (once) for its reference contrast
    counted.reads.clear()
    propagate(counted, {10: labels[10] == 1}, OraclePredictor(labels, image),
              contrast_limits=(0, 300), fade_threshold=0.1)
    assert sorted(counted.reads) == [7, 8, 9, 10, 11, 12, 13, 14]


def test_default_contrast_limits_computed_once(ellipsoid, monkeypatch):
    import napari_sam.normalize as normalize

    labels, image = ellipsoid
    calls = []
    real = normalize.stack_intensity_range
    monkeypatch.setattr(
        normalize, "stack_intensity_range", lambda s, *a, **k: calls.append(1) or real(s)
    )
    oracle = OraclePredictor(labels, image)
    limits = []
    embed = oracle.embed
    oracle.embed = lambda img, contrast_limits=None: limits.append(contrast_limits) or embed(img)
    propagate(image, {12: labels[12] == 1}, oracle)
    assert len(calls) == 1
    assert len(set(limits)) == 1 and limits[0] is not None


def test_channel_stack(ellipsoid):
    labels, _ = ellipsoid
    image = _image(labels, channels=3)
    result = propagate(image, {12: labels[12] == 1}, OraclePredictor(labels, image))
    lo, hi = _extent(result.mask_or_labels)
    true_lo, true_hi = _extent(labels == 1)
    assert abs(lo - true_lo) <= 1 and abs(hi - true_hi) <= 1


@pytest.mark.parametrize("kind", ["mapping", "callable"], ids=["mapping", "callable"])
def test_embeddings_provider_is_used(ellipsoid, kind):
    labels, image = ellipsoid
    source = OraclePredictor(labels, image)
    store = {z: source.embed(image[z]) for z in range(Z) if z != 5}  # 5 missing: KeyError
    oracle = OraclePredictor(labels, image)
    provider = store if kind == "mapping" else store.__getitem__
    result = propagate(image, {12: labels[12] == 1}, oracle, embeddings=provider)
    assert oracle.embedded == [5]  # only the missing one is computed
    np.testing.assert_array_equal(result.mask_or_labels[5:20], labels[5:20] == 1)


# --------------------------------------------------------------------- out
def test_out_preserves_existing_labels(ellipsoid):
    labels, image = ellipsoid
    truth = labels == 1
    out = np.zeros((Z, Y, X), np.uint16)
    out[:, :, :20] = 9  # another object covers part of ours
    out[12][truth[12]] = 4  # our own seed is already painted with our id
    before = out.copy()
    result = propagate(image, {12: truth[12]}, OraclePredictor(labels, image), out=out, label_id=4)
    assert result.mask_or_labels is out
    np.testing.assert_array_equal(out[before == 9], 9)  # untouched
    truth[[4, 20]] = False  # one-pixel caps: "vanished"
    expected = np.where((before == 0) & truth, 4, before)
    np.testing.assert_array_equal(out, expected)


def test_out_default_label_is_next_free(ellipsoid):
    labels, image = ellipsoid
    out = np.zeros((Z, Y, X), np.uint8)
    out[0, 0, 0] = 6
    propagate(image, {12: labels[12] == 1}, OraclePredictor(labels, image), out=out)
    assert set(np.unique(out)) == {0, 6, 7}


def test_out_label_must_fit(ellipsoid):
    labels, image = ellipsoid
    out = np.zeros((Z, Y, X), np.uint8)
    oracle = OraclePredictor(labels, image)
    with pytest.raises(ValueError, match="does not fit"):
        propagate(image, {12: labels[12] == 1}, oracle, out=out, label_id=300)
    assert not out.any() and oracle.embedded == []


# --------------------------------------------------------------- stop rules
class _Diffusing(OraclePredictor):
    """Past the object's end, answers with the prompt mask grown by 6 px (a leak)."""

    def answer(self, z, target, points, labels, box, mask):
        if target == 0 and mask is not None:
            from scipy import ndimage as ndi

            return ndi.binary_dilation(mask, iterations=6), 0.9
        return super().answer(z, target, points, labels, box, mask)


class _Unsure(OraclePredictor):
    """Exact masks, but scores fall with the distance from slice 10."""

    def answer(self, z, target, points, labels, box, mask):
        got, score = super().answer(z, target, points, labels, box, mask)
        return got, score - 0.2 * abs(z - 10)


def test_diffusing_masks_are_rejected():
    labels = _cylinder(6, 14, radius=6)
    image = _image(labels)
    result = propagate(image, {10: labels[10] == 1}, _Diffusing(labels, image), prompt_mode="mask")
    assert _extent(result.mask_or_labels) == (6, 14)
    stops = {r.z: r for r in result.records if not r.accepted}
    assert {z: r.status for z, r in stops.items()} == {5: "changed", 15: "changed"}
    assert stops[5].area > 2 * (labels[6] == 1).sum()


def test_low_score_stops():
    labels = _cylinder(0, Z - 1)
    image = _image(labels)
    result = propagate(image, {10: labels[10] == 1}, _Unsure(labels, image), score_threshold=0.5)
    assert _extent(result.mask_or_labels) == (8, 12)
    assert {r.z for r in result.records if r.status == "low_score"} == {7, 13}


def test_changed_when_prompt_jumps_to_another_object():
    # object 1 ends at z=9; object 2 starts right below it, shifted: IoU < threshold
    labels = np.zeros((Z, Y, X), np.uint16)
    labels[5:10, 20:40, 20:40] = 1
    labels[10:15, 30:50, 30:50] = 2
    image = _image(labels)
    result = propagate(image, {7: labels[7] == 1}, OraclePredictor(labels, image))
    assert _extent(result.mask_or_labels) == (5, 9)
    rec = next(r for r in result.records if r.z == 10)
    assert rec.status == "changed" and rec.iou_with_previous < 0.4


# -------------------------------------------------------------- prompts
@pytest.mark.parametrize("mode", ["box", "points", "mask", "box+points+neg"], ids=str)
def test_no_prompt_from_empty_mask(mode):
    settings = PromptSettings(parse_prompt_mode(mode))
    assert build_prompt(np.zeros((32, 32), bool), settings) is None


def test_prompt_contents():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 12:30] = True
    prompt = build_prompt(mask, PromptSettings(parse_prompt_mode("box+points+neg+mask")))
    r0, c0, r1, c1 = prompt.box
    assert r0 < 10 and c0 < 12 and r1 > 19 and c1 > 29
    pos = prompt.points[prompt.labels == 1]
    neg = prompt.points[prompt.labels == 0]
    rc = pos.astype(int)
    assert mask[rc[:, 0], rc[:, 1]].all() and len(pos) >= 2
    rc = neg.astype(int)
    assert not mask[rc[:, 0], rc[:, 1]].any() and len(neg) == 4
    assert prompt.mask is mask or np.array_equal(prompt.mask, mask)
    assert not prompt.multimask


def test_predictor_never_called_without_prompt(ellipsoid):
    labels, image = ellipsoid
    oracle = OraclePredictor(labels, image)  # raises on a prompt-less call
    for mode in BENCHMARK_MODES:
        propagate(image, {12: labels[12] == 1}, oracle, prompt_mode=mode)


# ------------------------------------------------------------ bad input
def _bad_cases():
    m = np.zeros((Y, X), bool)
    m[20:30, 20:30] = True
    return {
        "z-negative": ({-1: m}, {}, "outside the stack"),
        "z-too-large": ({Z: m}, {}, "outside the stack"),
        "z-not-integer": ({2.5: m}, {}, "integer slice index"),
        "empty-seed": ({3: np.zeros((Y, X), bool)}, {}, "empty"),
        "wrong-shape": ({3: m[:30]}, {}, "shape"),
        "labels-not-mask": ({3: m.astype(np.uint8) * 5}, {}, "bool mask"),
        "conflicting": ({1: [(3, m), (3, ~m)]}, {}, "two different seed masks on z=3"),
        "no-seeds": ({}, {}, "seeds is empty"),
        "object-id-0": ({0: {3: m}}, {}, ">= 1"),
        "mixed": ({3: m, 2: {4: m}}, {}, "mixes"),
        "mode": ({3: m}, {"prompt_mode": "lasso"}, "box, points, neg, mask"),
        "mode-neg-only": ({3: m}, {"prompt_mode": "neg"}, "only negative"),
        "z-range-empty": ({3: m}, {"z_range": (5, 5)}, "selects no slice"),
        "seed-outside-z-range": ({3: m}, {"z_range": (5, 10)}, "outside z_range"),
        "marker-on-seed": ({3: m}, {"stop_markers": {None: [3]}}, "stop marker on z"),
        "marker-outside": ({3: m}, {"stop_markers": [Z + 2]}, "outside the stack"),
        "marker-unknown-object": ({3: m}, {"stop_markers": {5: [4]}}, "no seeds"),
        "iou-threshold": ({3: m}, {"iou_threshold": 1.5}, r"\[0, 1\]"),
        "min-area": ({3: m}, {"min_area": 0}, "min_area"),
        "out-shape": ({3: m}, {"out": np.zeros((Z, Y, X + 1), np.uint16)}, "out has shape"),
        "out-float": ({3: m}, {"out": np.zeros((Z, Y, X), np.float32)}, "integer"),
        "label-id-multi": ({1: {3: m}, 2: {4: m}}, {"label_id": 3}, "ambiguous"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()), ids=list(_bad_cases()))
def test_bad_input_raises_before_anything_happens(ellipsoid, case):
    labels, image = ellipsoid
    seeds, kwargs, message = _bad_cases()[case]
    oracle = OraclePredictor(labels, image)
    out = kwargs.get("out")
    before = None if out is None else out.copy()
    with pytest.raises((ValueError, TypeError), match=message):
        propagate(image, seeds, oracle, **kwargs)
    assert oracle.embedded == [] and oracle.decoder_calls == 0
    if out is not None:
        np.testing.assert_array_equal(out, before)


def test_2d_image_says_nothing_to_propagate():
    labels = _cylinder(0, 3)[0]
    with pytest.raises(ValueError, match="nothing to propagate"):
        propagate_iter(labels, {0: labels == 1}, OraclePredictor(labels))


def test_unknown_mode_message_lists_modes():
    with pytest.raises(ValueError) as err:
        parse_prompt_mode("box+lasso")
    for part in PROMPT_PARTS:
        assert part in str(err.value)
    assert "'box+mask'" in str(err.value)


# ------------------------------------------------------------ real model
def test_real_model_end_to_end():
    torch = pytest.importorskip("torch")
    from napari_sam.model.sam import build_sam
    from napari_sam.predictor import Predictor

    torch.manual_seed(0)
    labels = ellipsoid_labels((5, 64, 64), [((2, 32, 32), (3, 20, 20))])
    rng = np.random.default_rng(0)
    image = (labels * 1000 + rng.integers(0, 200, labels.shape)).astype(np.uint16)
    predictor = Predictor(build_sam("vit_tiny"), precision="float32")
    out = np.zeros(labels.shape, np.uint16)
    result = propagate(
        image,
        {2: labels[2] == 1},
        predictor,
        out=out,
        label_id=2,
        score_threshold=0.0,
        iou_threshold=0.0,
        max_growth=1e9,
        min_area=1,
        fade_threshold=0.0,
    )
    assert result.mask_or_labels is out and out.shape == (5, 64, 64)
    assert set(np.unique(out)) <= {0, 2}
    np.testing.assert_array_equal(out[2] == 2, labels[2] == 1)
    zs = sorted(r.z for r in result.records)
    assert zs[0] >= 0 and zs[-1] <= 4 and 2 in zs
    for r in result.records:
        assert r.object_id == 1 and r.status in {"seed", "ok", "end", "low_score", "vanished"}
        if r.accepted:
            assert r.area == int((out[r.z] == 2).sum()) or r.z == 2


def test_package_level_propagate_is_the_function(ellipsoid):
    import napari_sam
    import napari_sam.propagation  # importing the implementation must not shadow the function

    assert napari_sam.propagate is napari_sam.propagation.propagate
    labels, image = ellipsoid
    result = napari_sam.propagate(image, {12: labels[12] == 1}, OraclePredictor(labels, image))
    assert isinstance(result, PropagationResult)
    assert result.mask_or_labels[12].sum() == (labels[12] == 1).sum()


class _Fragments(OraclePredictor):
    """Exact masks plus a far-away fragment, as SAM sometimes adds."""

    def answer(self, z, target, points, labels, box, mask):
        got, score = super().answer(z, target, points, labels, box, mask)
        if target:
            got = got.copy()
            got[:4, -4:] = True
        return got, score


def test_far_fragments_are_dropped():
    labels = _cylinder(5, 15)
    image = _image(labels)
    result = propagate(image, {10: labels[10] == 1}, _Fragments(labels, image))
    np.testing.assert_array_equal(result.mask_or_labels, labels == 1)


class _EchoPredictor:
    """Returns the mask prompt as the prediction: never stops by itself (for the fade rule)."""

    def embed(self, image, *, contrast_limits=None):
        return np.asarray(image).shape[:2]

    def predict(self, emb, points=None, labels=None, box=None, mask=None, multimask=True):
        from napari_sam.predictor import Prediction

        m = np.asarray(mask, bool)[None]
        return Prediction(m, np.ones(1, np.float32), m.astype(np.float32))


def _fading_disc():
    """A disc on slices 4..8 at full contrast, then fading: 0.6, 0.35, 0.1 beyond each end."""
    y, x = np.mgrid[:48, :48]
    disc = (y - 24) ** 2 + (x - 24) ** 2 <= 8**2
    level = np.zeros(13)
    level[4:9] = 1.0
    level[[3, 9]], level[[2, 10]], level[[1, 11]] = 0.6, 0.35, 0.1
    image = 100 + 1000 * level[:, None, None] * disc
    return image.astype(np.uint16), disc


@pytest.mark.parametrize(("threshold", "extent"), [(0.4, (3, 9)), (0.5, (3, 9)), (0.7, (4, 8))])
def test_fade_rule_stops_where_the_contrast_fades(threshold, extent):
    image, disc = _fading_disc()
    result = propagate(image, {6: disc}, _EchoPredictor(), fade_threshold=threshold,
                       fade_step=0)  # the keyframe part alone
    assert _extent(result.mask_or_labels) == extent
    faded = sorted(r.z for r in result.records if r.status == "faded")
    assert faded == [extent[0] - 1, extent[1] + 1]


def test_fade_rule_off_and_dark_objects():
    image, disc = _fading_disc()
    result = propagate(image, {6: disc}, _EchoPredictor(), fade_threshold=0)
    assert _extent(result.mask_or_labels) == (0, 12)  # nothing else stops the echo
    dark = (2000 - image.astype(np.int32)).astype(np.uint16)  # dark disc on a bright background
    result = propagate(dark, {6: disc}, _EchoPredictor(), fade_threshold=0.4, fade_step=0)
    assert _extent(result.mask_or_labels) == (3, 9)
    result = propagate(dark, {6: disc}, _EchoPredictor(), fade_threshold=0.4, fade_step=0.7)
    assert _extent(result.mask_or_labels) == (4, 8)
    result = propagate(image, {6: disc}, _EchoPredictor())  # generic default: off
    assert _extent(result.mask_or_labels) == (0, 12)


def test_registry_recommends_propagation_options_per_model():
    from napari_sam.model.registry import recommended_propagation
    from napari_sam.propagation.engine import Engine

    image, disc = _fading_disc()
    echo = _EchoPredictor()
    echo.model_name = "micro"
    assert recommended_propagation("micro") == {"prompt_mode": "box+mask+neg",
                                                "fade_threshold": 0.4}
    assert recommended_propagation("vit_b") == {} == recommended_propagation("/a/path.pt")
    engine = Engine.create(image, {6: disc}, echo)
    assert engine.options.fade_threshold == 0.4
    assert engine.options.prompts.parts == parse_prompt_mode("box+mask+neg")
    engine = Engine.create(image, {6: disc}, echo, prompt_mode="box", fade_threshold=0)
    assert engine.options.fade_threshold == 0.0  # the caller's choice wins
    # fade 0.4 of the keyframe's contrast and 0.7 of the previous slice's (1.0 -> 0.6)
    assert _extent(propagate(image, {6: disc}, echo, fade_step=0.7).mask_or_labels) == (4, 8)


def test_fade_step_stops_a_sudden_drop_but_not_a_gradual_fade():
    """Inside an object the contrast falls by 15 % per slice (to 0.44 of the keyframe's);
    past its ends it drops to 0.25, then 0.05: the step part stops at the drop, which the
    keyframe part (0.1 here) lets through."""
    y, x = np.mgrid[:48, :48]
    disc = (y - 24) ** 2 + (x - 24) ** 2 <= 5**2
    d = np.abs(np.arange(17) - 8)
    level = np.where(d <= 5, 0.85**d, np.where(d == 6, 0.25, 0.05))
    image = (100 + 1000 * level[:, None, None] * disc).astype(np.uint16)
    result = propagate(image, {8: disc}, _EchoPredictor(), fade_threshold=0.1)
    assert _extent(result.mask_or_labels) == (3, 13)
    assert sorted(r.z for r in result.records if r.status == "faded") == [2, 14]
    result = propagate(image, {8: disc}, _EchoPredictor(), fade_threshold=0.1, fade_step=0)
    assert _extent(result.mask_or_labels) == (2, 14)
    result = propagate(image, {8: disc}, _EchoPredictor(), fade_threshold=0)  # both off
    assert _extent(result.mask_or_labels) == (0, 16)


class _Underconfident(OraclePredictor):
    """Exact masks with low scores (a model unsure about small objects): 0.4 on slice 10,
    0.05 less per slice away from it."""

    def answer(self, z, target, points, labels, box, mask):
        got, score = super().answer(z, target, points, labels, box, mask)
        return got, (0.4 - 0.05 * abs(z - 10)) if target else score


def test_low_scores_are_judged_against_the_keyframe_score():
    labels = _cylinder(0, Z - 1)
    image = _image(labels)
    seeds = {10: labels[10] == 1}
    # the keyframe itself scores 0.4 < score_threshold 0.5; 0.7 of it is 0.28: 2 slices
    result = propagate(image, seeds, _Underconfident(labels, image))
    assert _extent(result.mask_or_labels) == (8, 12)
    assert {r.z for r in result.records if r.status == "low_score"} == {7, 13}
    result = propagate(image, seeds, _Underconfident(labels, image), keyframe_score_share=0.5)
    assert _extent(result.mask_or_labels) == (6, 14)  # down to 0.2
    result = propagate(image, seeds, _Underconfident(labels, image), keyframe_score_share=0)
    assert _extent(result.mask_or_labels) == (10, 10)  # score_threshold alone
    result = propagate(image, seeds, _Underconfident(labels, image), score_threshold=0.3,
                       keyframe_score_share=0)
    assert _extent(result.mask_or_labels) == (8, 12)
    # a confident keyframe keeps score_threshold as it is: test_low_score_stops


def test_keyframe_scores_embed_each_slice_once():
    labels = _cylinder(0, Z - 1, centre=(16, 16), radius=8)
    labels[_cylinder(0, Z - 1, centre=(46, 46), radius=8) == 1] = 2
    image = _image(labels)
    oracle = _Underconfident(labels, image)
    seeds = {1: {10: labels[10] == 1}, 2: {10: labels[10] == 2, 16: labels[16] == 2}}
    result = propagate(image, seeds, oracle)
    assert _extent(result.mask_or_labels == 1) == (8, 12)
    assert len(oracle.embedded) == len(set(oracle.embedded))
    assert 10 in oracle.embedded  # the keyframe, once for both objects


@pytest.mark.parametrize("name", ["fade_step", "keyframe_score_share"])
@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.4"])
def test_shares_are_checked(name, bad):
    image, disc = _fading_disc()
    with pytest.raises(ValueError, match=name):
        propagate(image, {6: disc}, _EchoPredictor(), **{name: bad})


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.4", [0.4]])
def test_fade_threshold_is_checked(bad):
    image, disc = _fading_disc()
    with pytest.raises(ValueError, match="fade_threshold"):
        propagate(image, {6: disc}, _EchoPredictor(), fade_threshold=bad)


def test_object_contrast_ignores_a_touching_neighbour():
    from napari_sam.propagation.fade import object_contrast

    plane = np.full((40, 40), 10.0)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    plane[mask] = 110.0
    assert object_contrast(plane, mask) == pytest.approx(100.0)
    plane[10:20, 20:30] = 500.0  # a bright neighbour on one side of the ring
    assert object_contrast(plane, mask) == pytest.approx(100.0)
    assert np.isnan(object_contrast(plane, np.zeros_like(mask)))
