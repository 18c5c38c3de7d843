"""Propagation along any non-displayed axis: tracking through t in (T, Y, X) and (T, Z, Y, X)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.propagation import propagate, propagate_iter
from napari_sam.propagation.engine import TRACKING_DEFAULTS
from napari_sam.propagation.inputs import along_axis, resolve_axis
from napari_sam.propagation.masks import shift_mask, step_motion
from stand_ins import OraclePredictor

T, Y, X = 20, 64, 64


def _disk(centre, radius, shape=(Y, X)) -> np.ndarray:
    rr, cc = np.indices(shape)
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def moving_disks(n_frames: int = T, speed=(0.0, 2.0), start=(32.0, 10.0), radius=7):
    """(T, Y, X) labels of one disk (id 1) moving ``speed`` px per frame, plus a
    still disk (id 2) in a corner; images whose frames all differ."""
    labels = np.zeros((n_frames, Y, X), np.uint16)
    for t in range(n_frames):
        centre = np.add(start, np.multiply(speed, t))
        labels[t][_disk(centre, radius)] = 1
        labels[t][_disk((8, 56), 5) & (labels[t] == 0)] = 2
    images = labels * 100 + np.arange(n_frames, dtype=np.uint16)[:, None, None]
    return labels, images


def test_track_a_moving_object_through_t_keeps_its_id():
    labels, images = moving_disks()
    oracle = OraclePredictor(labels, images)
    res = propagate(images, {0: labels[0] == 1}, oracle, axis="t", label_id=5)
    out = res.mask_or_labels
    assert out.shape == (T, Y, X)
    for t in range(T):
        np.testing.assert_array_equal(out[t] == 5, labels[t] == 1)
    assert set(np.unique(out)) == {0, 5}  # the still neighbour never takes the id
    assert [r.status for r in res.records][-1] == "end"
    # the tracking defaults: box+points+mask..., motion on
    assert TRACKING_DEFAULTS["fade_threshold"] == 0.0


def test_exit_ends_the_track_without_labels_past_it():
    # moves right 4 px per frame and leaves the 64 px frame at t ~ 15
    labels, images = moving_disks(speed=(0.0, 4.0))
    oracle = OraclePredictor(labels, images)
    res = propagate(images, {0: labels[0] == 1}, oracle, axis="t")
    out = res.mask_or_labels
    # the track follows it while at least min_area (8) px of it are visible
    present = [t for t in range(T) if np.count_nonzero(labels[t] == 1) >= 8]
    gone = [t for t in range(T) if t not in present]
    assert gone and present == list(range(gone[0])), "the object must leave the frame"
    for t in present:
        np.testing.assert_array_equal(out[t], labels[t] == 1)
    assert not out[gone].any()
    stop = [r for r in res.records if not r.accepted]
    assert [(r.z, r.status) for r in stop] == [(gone[0], "vanished")]


def test_division_keeps_one_daughter_no_lineage():
    labels = np.zeros((8, Y, X), np.uint16)
    for t in range(8):
        if t < 4:
            labels[t][_disk((32, 32), 9)] = 1
        else:  # two daughters moving apart
            d = 6 + 2 * (t - 4)
            labels[t][_disk((32, 32 - d), 6)] = 2
            labels[t][_disk((32, 32 + d), 6)] = 3
    images = labels * 100 + np.arange(8, dtype=np.uint16)[:, None, None]
    res = propagate(images, {0: labels[0] == 1}, OraclePredictor(labels, images), axis="t")
    out = res.mask_or_labels
    for t in range(4, 8):
        covered = {int(v) for v in np.unique(labels[t][out[t]])} - {0}
        assert len(covered) <= 1  # at most one daughter keeps the id
    assert any(r.status in ("changed", "vanished") for r in res.records)


def test_tzyx_along_t_at_one_z_writes_only_there():
    labels3, _ = moving_disks(n_frames=6)
    n_z = 4
    labels = np.zeros((6, n_z, Y, X), np.uint16)
    labels[:, 2] = labels3  # the objects live at z = 2
    images = (labels * 100 + np.arange(6 * n_z, dtype=np.uint16).reshape(6, n_z, 1, 1))
    oracle = OraclePredictor(labels[:, 2], images[:, 2])
    out = np.zeros(labels.shape, np.uint16)
    out[1, 0, 0, 0] = 9  # existing labels stay
    res = propagate(images, {0: labels[0, 2] == 1}, oracle, axis="t", position=(None, 2),
                    out=out, label_id=3)
    assert res.mask_or_labels is out
    for t in range(6):
        np.testing.assert_array_equal(out[t, 2] == 3, labels3[t] == 1)
    assert not out[:, [0, 1, 3]].any(axis=(2, 3))[:, [1, 2]].any()
    assert out[1, 0, 0, 0] == 9
    # the axis' own shape works too, and an integer axis of (T, Z, Y, X)
    small = propagate(images, {0: labels[0, 2] == 1}, oracle, axis=0, position=(0, 2))
    assert small.mask_or_labels.shape == (6, Y, X)
    np.testing.assert_array_equal(small.mask_or_labels, labels3 == 1)


def test_tzyx_along_z_at_one_t():
    z_labels = np.zeros((5, Y, X), np.uint16)
    for z in range(1, 4):
        z_labels[z][_disk((32, 32), 8 - abs(z - 2))] = 1
    labels = np.zeros((3, 5, Y, X), np.uint16)
    labels[1] = z_labels
    images = labels * 100 + np.arange(15, dtype=np.uint16).reshape(3, 5, 1, 1)
    oracle = OraclePredictor(labels[1], images[1])
    updates = list(propagate_iter(images, {2: z_labels[2] == 1}, oracle, axis="z",
                                  position=(1, 0)))
    accepted = sorted(u.z for u in updates if u.masks)
    assert accepted == [1, 2, 3]
    view = along_axis(images, "z", (1, 0))
    assert not view.time and along_axis(images, "t", (0, 1)).time
    np.testing.assert_array_equal(view[3], images[1, 3])


def test_motion_follows_fast_objects():
    # 6 px per frame: the unshifted mask of frame t overlaps frame t+1's object by
    # too little for the IoU rule; following the motion keeps the track
    labels, images = moving_disks(n_frames=8, speed=(0.0, 6.0), radius=6)
    oracle = OraclePredictor(labels, images)
    seeds = {0: labels[0] == 1, 1: labels[1] == 1}
    still = propagate(images, seeds, oracle, axis="t", motion=False, direction="up")
    moving = propagate(images, seeds, oracle, axis="t", direction="up")
    n_still = sum(r.accepted for r in still.records)
    n_moving = sum(r.accepted for r in moving.records)
    assert n_moving == 8 and n_still < n_moving
    np.testing.assert_array_equal(moving.mask_or_labels, labels == 1)


def test_shift_and_motion_helpers():
    m = np.zeros((6, 6), bool)
    m[1:3, 1:3] = True
    np.testing.assert_array_equal(shift_mask(m, (2, 3))[3:5, 4:6], True)
    assert shift_mask(m, (2, 3)).sum() == 4 and shift_mask(m, (0, 5)).sum() == 0
    moved = shift_mask(m, (1, 1))
    np.testing.assert_allclose(step_motion(m, moved, None), [1, 1])
    edge = np.zeros((6, 6), bool)
    edge[0, 0] = True
    assert step_motion(m, edge, np.array([0.5, 0.5]))[0] == 0.5  # kept at the edge


@pytest.mark.parametrize(
    ("shape", "axis", "match"),
    [
        ((T, Y, X), 3, r"axis 3 does not exist in a stack of shape \(20, 64, 64\)"),
        ((T, Y, X), 1, r"axis 1 is Y, one of the two displayed axes .* non-displayed axis: 0"),
        ((T, Y, X), -1, r"axis -1 is X, one of the two displayed axes"),
        ((T, 4, Y, X), 2, r"axis 2 is Y, one of the two displayed axes .* 0\.\.1"),
        ((T, Y, X, 3), 3, "the channel axis C"),
        ((T, Y, X), "q", r"axis 'q' is not an axis name; use 't'"),
        ((Y, X), "t", r"one 2D slice, with no axis to propagate or track through"),
    ],
)
def test_bad_axes_say_what_to_do(shape, axis, match):
    with pytest.raises(ValueError, match=match):
        resolve_axis(shape, axis)


def test_bad_input_along_axis():
    labels, images = moving_disks(n_frames=4)
    oracle = OraclePredictor(labels, images)
    seed = {0: labels[0] == 1}
    with pytest.raises(ValueError, match="one 2D slice"):
        propagate(images[0], seed, oracle, axis="t")
    with pytest.raises(ValueError, match=r"axis 2 is X"):
        propagate(images, seed, oracle, axis=2)
    four = np.zeros((4, 3, Y, X), np.uint16)
    with pytest.raises(ValueError, match=r"has 2 leading axes; pass position="):
        propagate(four, seed, oracle, axis="t")
    with pytest.raises(ValueError, match=r"position=\(1,\) has 1 entries"):
        propagate(four, seed, oracle, axis="t", position=(1,))
    with pytest.raises(ValueError, match=r"position\[1\] = 3 is outside axis 1"):
        propagate(four, seed, oracle, axis="t", position=(0, 3))
    whole = r"or the whole stack's \(\.\.\., Y, X\) = \(4, 3, 64, 64\)"
    with pytest.raises(ValueError, match=whole):
        propagate(four, seed, oracle, axis="t", position=(0, 1), out=np.zeros((4, Y, X + 1), int))
    # without an axis a (T, Z, Y, X) stack says how to choose one
    with pytest.raises(ValueError, match="pass axis='t' or axis='z' and position"):
        propagate(four, seed, oracle)


def test_micro_tracks_moving_nuclei_over_20_frames():
    """The bundled model: every nucleus inside frame 0 of a generated time-lapse
    (benchmarks/tracking.py, seed 1), clicked once, keeps its id on >= 90 % of the
    frames where it is visible, and no frame after it left carries its id."""
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from tracking import moving_nuclei, track_scene

    from napari_sam.predictor import Predictor

    images, truth = moving_nuclei(20, (128, 128), seed=1)
    assert images.shape == (20, 128, 128)
    predictor = Predictor("micro", device="cpu", precision="float32")
    rows = track_scene(predictor, images, truth, min_area=30)
    assert len(rows) >= 3
    for row in rows:
        assert row["kept"] >= 0.9 * row["frames"], row
        assert row["past_exit"] == 0
