"""Scribbles and lassos (napari_sam.scribbles): geometry, inputs, prompts, the correction loop."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from napari_sam.predictor import Prediction
from napari_sam.scribbles import (
    MIN_SPACING,
    Stroke,
    clip_polyline,
    sample_polyline,
    scribble_prompt,
    strokes_from_labels,
    strokes_from_shapes,
)
from stand_ins import OraclePredictor

SHAPE = (64, 64)


def _disk(centre, radius, shape=SHAPE) -> np.ndarray:
    rr, cc = np.indices(shape)
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


class DisksPredictor:
    """Stand-in: the mask is the union of disks of radius ``radius`` around the
    positive points, minus disks of radius 3 around the negative ones; box and
    mask prompts are recorded (a mask prompt alone is returned as the mask)."""

    def __init__(self, radius: int = 6, shape=SHAPE) -> None:
        self.radius = radius
        self.shape = shape
        self.calls: list[dict] = []

    def embed(self, image, *, contrast_limits=None):
        return SimpleNamespace(original_size=self.shape)

    def predict(self, embedding, points=None, labels=None, box=None, mask=None, multimask=True):
        self.calls.append({"points": points, "labels": labels, "box": box, "mask": mask,
                           "multimask": multimask})
        out = np.zeros(self.shape, bool)
        if points is not None:
            for p, lab in zip(np.asarray(points), np.asarray(labels)):
                if lab == 1:
                    out |= _disk(p, self.radius, self.shape)
                else:
                    out &= ~_disk(p, 3, self.shape)
        elif mask is not None:
            out = np.asarray(mask, bool).copy()
        k = 3 if multimask else 1
        masks = np.repeat(out[None], k, axis=0)
        return Prediction(masks, np.full(k, 0.9, np.float32), np.where(masks, 8.0, -8.0))


# ----------------------------------------------------------------------------- geometry
def test_sample_polyline_spreads_by_arc_length_with_endpoints():
    # an L: 10 px down, then 30 px right (40 px long)
    verts = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 30.0]])
    pts = sample_polyline(verts, 5)
    np.testing.assert_allclose(pts, [[0, 0], [10, 0], [10, 10], [10, 20], [10, 30]])
    np.testing.assert_allclose(sample_polyline(verts, 1), [[10, 10]])  # the middle by length
    np.testing.assert_allclose(sample_polyline([[3.0, 4.0]], 2), [[3, 4], [3, 4]])
    with pytest.raises(ValueError, match="n must be >= 1"):
        sample_polyline(verts, 0)


def test_clip_polyline_keeps_the_pieces_inside():
    # leaves the 20x20 slice on the right and comes back
    pieces = clip_polyline([[5, 5], [5, 30], [15, 30], [15, 5]], (20, 20))
    assert len(pieces) == 2
    np.testing.assert_allclose(pieces[0], [[5, 5], [5, 19]])
    np.testing.assert_allclose(pieces[1], [[15, 19], [15, 5]])
    # enters from above: one piece, cut at row 0
    (piece,) = clip_polyline([[-10, 4], [10, 4], [10, 8]], (20, 20))
    np.testing.assert_allclose(piece, [[0, 4], [10, 4], [10, 8]])
    assert clip_polyline([[-5, -5], [-1, 30]], (20, 20)) == []
    assert clip_polyline([[25, 3]], (20, 20)) == []


# ----------------------------------------------------------------------------- inputs
def test_strokes_from_shapes_types_closed_paths_and_slices():
    line = np.array([[10.0, 10.0], [10.0, 40.0]])
    ring = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0], [11.0, 10.0]])
    back_and_forth = np.array([[10.0, 10.0], [10.0, 30.0], [10.5, 10.0]])
    rect = np.array([[0.0, 0.0], [0.0, 5.0], [5.0, 5.0], [5.0, 0.0]])
    strokes = strokes_from_shapes(
        [line, ring, back_and_forth, rect, ring[:4]],
        ["line", "path", "path", "rectangle", "polygon"],
        [True, True, False, True, True],
    )
    assert [s.name for s in strokes] == ["shape 0", "shape 1", "shape 2", "shape 4"]
    assert [s.closed for s in strokes] == [False, True, False, True]
    assert [s.positive for s in strokes] == [True, True, False, True]
    # 3D vertices: the leading coordinate must be the displayed slice
    on_z3 = np.array([[3.0, 5.0, 5.0], [3.2, 5.0, 20.0]])
    (stroke,) = strokes_from_shapes([on_z3], "path", slice_index=(3,))
    np.testing.assert_allclose(stroke.vertices, [[5, 5], [5, 20]])
    with pytest.raises(ValueError, match=r"shape 0 lies on slice \[4\], not on the displayed"):
        strokes_from_shapes([on_z3 + np.array([1, 0, 0])], "path", slice_index=(3,))
    with pytest.raises(ValueError, match="pass slice_index"):
        strokes_from_shapes([on_z3], "path")
    with pytest.raises(ValueError, match="NaN"):
        strokes_from_shapes([np.array([[1.0, np.nan]])], "path")
    with pytest.raises(ValueError, match="one of each per shape"):
        strokes_from_shapes([line, line], ["path"])


def test_strokes_from_labels_lines_loops_and_background():
    lab = np.zeros(SHAPE, np.uint8)
    lab[20, 10:41] = 1  # an object line, 31 px
    lab[40:42, 5:30] = 2  # a background stroke, 2 px thick
    lab[50, 50:60] = lab[59, 50:60] = lab[50:60, 50] = lab[50:60, 59] = 1  # a painted loop
    strokes = strokes_from_labels(lab)
    by_name = {s.name: s for s in strokes}
    line = by_name["painted object stroke 1"]
    assert not line.closed and line.positive
    assert {tuple(line.vertices[0]), tuple(line.vertices[-1])} == {(20.0, 10.0), (20.0, 40.0)}
    assert line.length == pytest.approx(30.0)
    loop = by_name["painted object stroke 2"]
    assert loop.closed
    expected = np.zeros(SHAPE, bool)
    expected[50:60, 50:60] = True
    np.testing.assert_array_equal(loop.area, expected)
    background = by_name["painted background stroke 1"]
    assert not background.positive and not background.closed
    assert background.length >= 23.0
    with pytest.raises(ValueError, match=r"one \(H, W\) slice"):
        strokes_from_labels(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="must be integers"):
        strokes_from_labels(np.zeros((8, 8), np.float32))


# ----------------------------------------------------------------------------- prompts
def test_prompt_starts_with_clicks_and_stroke_middles():
    strokes = [Stroke(np.array([[32.0, 10.0], [32.0, 50.0]]), True, name="a"),
               Stroke(np.array([[5.0, 5.0], [5.0, 15.0]]), False, name="b")]
    prompt = scribble_prompt(strokes, SHAPE, points=[[40, 40]], point_labels=[1])
    np.testing.assert_allclose(prompt.points, [[40, 40], [32, 30], [5, 10]])
    np.testing.assert_array_equal(prompt.labels, [1, 1, 0])
    assert prompt.box is None and prompt.mask is None and not prompt.multimask
    # samples every MIN_SPACING px, endpoints included
    first = prompt.samples[prompt.sample_labels == 1]
    np.testing.assert_allclose(first[:, 1], np.arange(10, 51, MIN_SPACING))
    np.testing.assert_allclose(prompt.samples[prompt.sample_labels == 0][:, 1],
                               np.arange(5, 16, MIN_SPACING))
    kwargs = prompt.predict_kwargs()
    assert kwargs["points"] is prompt.points and kwargs["multimask"] is False


def test_lasso_gives_mask_and_box_and_no_points():
    square = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0]])
    prompt = scribble_prompt([Stroke(square, True, closed=True, name="lasso")], SHAPE)
    expected = np.zeros(SHAPE, bool)
    expected[10:31, 10:31] = True  # pixel centres inside (polygon2mask)
    np.testing.assert_array_equal(prompt.mask, expected)
    np.testing.assert_allclose(prompt.box, [10, 10, 30, 30])
    assert len(prompt.points) == 0 and prompt.predict_kwargs()["points"] is None
    # cut at the slice edge, with a note
    cut = scribble_prompt([Stroke(square + np.array([40, 40]), True, closed=True, name="L")], SHAPE)
    assert cut.mask.sum() == 14 * 14 and cut.mask[50:64, 50:64].all()
    assert cut.messages == ("lasso L was cut at the edge of the 64x64 slice",)


def test_clipped_and_outside_strokes():
    prompt = scribble_prompt([Stroke(np.array([[32.0, -20.0], [32.0, 40.0]]), name="s")], SHAPE)
    assert prompt.messages == ("s was clipped to the 64x64 slice",)
    assert prompt.samples[:, 1].min() == 0.0
    np.testing.assert_allclose(prompt.points, [[32, 20]])  # the middle of the part inside
    with pytest.raises(ValueError, match=r"stroke 7 .* lies outside the 64x64 slice"):
        scribble_prompt([Stroke(np.array([[-5.0, 3.0], [-9.0, 60.0]]), name="stroke 7")], SHAPE)
    with pytest.raises(ValueError, match="encloses no pixel of the 64x64 slice"):
        scribble_prompt([Stroke(np.array([[70.0, 70], [70, 90], [90, 90]]), closed=True)], SHAPE)


def test_prompt_errors_name_the_fix():
    neg = Stroke(np.array([[5.0, 5.0], [5.0, 15.0]]), False)
    with pytest.raises(ValueError, match="no object prompt"):
        scribble_prompt([neg], SHAPE)
    many = [Stroke(np.array([[r, 5.0], [r, 15.0]])) for r in range(10, 40, 3)]
    with pytest.raises(ValueError, match="10 stroke pieces and 0 clicks do not fit max_points=8"):
        scribble_prompt(many, SHAPE)
    with pytest.raises(ValueError, match="max_points must be an integer >= 1"):
        scribble_prompt([neg], SHAPE, max_points=0)
    with pytest.raises(ValueError, match="one label per point"):
        scribble_prompt([], SHAPE, points=[[1, 1]], point_labels=[1, 0])


# ----------------------------------------------------------------------------- the loop
def test_segment_adds_the_deepest_broken_sample_until_the_stroke_is_inside():
    predictor = DisksPredictor(radius=6)
    stroke = Stroke(np.array([[32.0, 10.0], [32.0, 50.0]]))
    prompt = scribble_prompt([stroke], SHAPE)
    res = prompt.segment(predictor, predictor.embed(None))
    # middle, then the farthest broken samples (first one on ties), 2 px apart
    np.testing.assert_allclose(res.points, [[32, 30], [32, 10], [32, 50], [32, 20], [32, 40]])
    np.testing.assert_array_equal(res.labels, [1, 1, 1, 1, 1])
    expected = np.zeros(SHAPE, bool)
    for p in res.points:
        expected |= _disk(p, 6)
    np.testing.assert_array_equal(res.mask, expected)
    assert (res.violations, res.steps, res.n_samples) == (0, 5, 21)
    assert predictor.calls[0]["multimask"] is True and predictor.calls[0]["mask"] is None
    # later calls get the previous mask as the mask prompt, one output
    assert predictor.calls[1]["multimask"] is False
    np.testing.assert_array_equal(predictor.calls[1]["mask"], _disk((32, 30), 6))


def test_segment_budget_keeps_the_best_step():
    predictor = DisksPredictor(radius=6)
    stroke = Stroke(np.array([[32.0, 10.0], [32.0, 50.0]]))
    res = scribble_prompt([stroke], SHAPE, max_points=2).segment(predictor, None)
    assert res.steps == 2 and len(res.points) == 2
    # disks at cols 30 and 10 cover cols 24..36 and 4..16: the samples at cols 18, 20,
    # 22 and 38..50 lie more than 1 px outside (the first step also broke cols 10..22)
    assert res.violations == 10
    broken = scribble_prompt([stroke], SHAPE).violations(res.mask)
    assert np.count_nonzero(broken) == res.violations


def test_segment_negative_stroke_cuts_the_mask():
    predictor = DisksPredictor(radius=10)
    strokes = [Stroke(np.array([[32.0, 30.0], [32.0, 32.0]])),
               Stroke(np.array([[24.0, 20.0], [24.0, 40.0]]), positive=False)]
    prompt = scribble_prompt(strokes, SHAPE)
    res = prompt.segment(predictor, None)
    assert res.violations == 0 and res.mask[32, 31]
    # every background sample is outside the mask or within 1 px of its edge
    assert not prompt.violations(res.mask).any()
    np.testing.assert_array_equal(res.labels[:2], [1, 0])  # the strokes' middles first


def test_segment_with_the_oracle_and_a_stroke_into_background():
    labels = np.zeros(SHAPE, np.uint16)
    labels[_disk((32, 32), 10)] = 1
    labels[_disk((10, 10), 5)] = 2
    image = labels * 100
    oracle = OraclePredictor(labels, image)
    emb = oracle.embed(image)
    inside = scribble_prompt([Stroke(np.array([[32.0, 26.0], [32.0, 38.0]]))], SHAPE)
    res = inside.segment(oracle, emb)
    np.testing.assert_array_equal(res.mask, labels == 1)
    assert (res.steps, res.violations) == (1, 0)
    # runs from the object 18 px into the background: the object stays the object
    # and the samples beyond the edge (+1 px tolerance) are reported
    past = scribble_prompt([Stroke(np.array([[32.0, 30.0], [32.0, 60.0]]))], SHAPE)
    res = past.segment(oracle, emb)
    np.testing.assert_array_equal(res.mask, labels == 1)
    assert res.violations == np.count_nonzero(past.samples[:, 1] > 43)
    assert res.steps == past.max_points - len(past.points) + 1


def test_lasso_segment_uses_mask_and_box():
    predictor = DisksPredictor()
    square = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0]])
    prompt = scribble_prompt([Stroke(square, True, closed=True)], SHAPE)
    res = prompt.segment(predictor, None)
    assert res.steps == 1 and res.n_samples == 0
    np.testing.assert_array_equal(predictor.calls[0]["mask"], prompt.mask)
    np.testing.assert_allclose(predictor.calls[0]["box"], [10, 10, 30, 30])
    np.testing.assert_array_equal(res.mask, prompt.mask)


def test_scribbles_import_no_gui_and_no_torch():
    code = ("import sys, napari_sam.scribbles; "
            "print([m for m in ('torch', 'napari', 'qtpy', 'PyQt6') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


# ----------------------------------------------------------------------------- the model
def test_micro_scribble_across_nuclei_segments_like_a_centre_click():
    """The bundled model: a stroke through each nucleus' centre (60 % of its long axis)
    against a click on that centre (benchmarks/scribble_quality.py, one scene)."""
    pytest.importorskip("torch")
    from napari_sam.masks import keep_prompted_parts
    from napari_sam.predictor import Predictor
    from napari_sam.synthetic import nuclei_2d
    from napari_sam.training.validation import object_prompts

    image, labels = nuclei_2d((256, 256), seed=9931)
    predictor = Predictor("micro", device="cpu", precision="float32")
    emb = predictor.embed(image)
    ids, centres, _ = object_prompts(labels, min_area=30)
    click, scribble, spread = [], [], []

    def iou(a, b):
        return np.count_nonzero(a & b) / np.count_nonzero(a | b)

    for oid, centre in zip(ids, centres):
        truth = labels == oid
        rc = np.argwhere(truth) - np.argwhere(truth).mean(axis=0)
        _, vecs = np.linalg.eigh(rc.T @ rc)
        axis = vecs[:, -1]
        half = 0.3 * (np.ptp(rc @ axis) + 1) * axis
        verts = np.clip([centre - half, centre + half], 0, 255)
        pred = predictor.predict(emb, points=centre[None], multimask=True)
        click.append(iou(keep_prompted_parts(pred.best_mask, centre[None]), truth))
        prompt = scribble_prompt([Stroke(verts)], labels.shape)
        scribble.append(iou(prompt.segment(predictor, emb).mask, truth))
        pts = sample_polyline(verts, 8)
        pred = predictor.predict(emb, points=pts, multimask=False)
        spread.append(iou(keep_prompted_parts(pred.best_mask, pts), truth))
    assert len(ids) >= 30
    assert np.mean(scribble) >= np.mean(click) - 0.01
    assert np.mean(spread) < np.mean(scribble) - 0.05  # why the strokes are not spread
