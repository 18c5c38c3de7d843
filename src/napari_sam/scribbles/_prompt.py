"""The prompt of one object from its strokes, and its segmentation with correction points."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.scribbles._geometry import (
    _mask_box,
    _segment_lengths,
    clip_polyline,
    sample_polyline,
)
from napari_sam.scribbles._strokes import Stroke, _check_vertices, _describe

#: Most points one object's prompt gets (clicks + points taken from strokes).
DEFAULT_MAX_POINTS = 8
#: Distance in pixels between the samples of a stroke (the constraints).
MIN_SPACING = 2.0
#: Pixels a stroke sample may lie on the wrong side of the mask's edge unflagged.
DEFAULT_TOLERANCE = 1.0
#: Most samples kept per stroke piece (longer pieces are sampled more sparsely).
MAX_SAMPLES = 512


@dataclass(frozen=True, eq=False)
class ScribbleResult:
    """What :meth:`ScribblePrompt.segment` returns.

    Attributes
    ----------
    mask : ``(H, W)`` bool: the prompted parts of the chosen prediction's best mask
    prediction : the chosen :class:`~napari_sam.predictor.Prediction`
    points : ``(N, 2)`` float64 ``(row, col)`` of the prompt that gave it
    labels : ``(N,)`` int64, 1 positive / 0 negative
    violations : stroke samples still on the wrong side of the mask (by more
        than the tolerance): object samples outside, background samples inside
    n_samples : stroke samples checked
    steps : decoder calls made
    """

    mask: np.ndarray
    prediction: Any
    points: np.ndarray
    labels: np.ndarray
    violations: int
    n_samples: int
    steps: int


@dataclass(frozen=True, eq=False)
class ScribblePrompt:
    """The prompt of one object made from its strokes (and clicks).

    Attributes
    ----------
    points : ``(N, 2)`` float64 ``(row, col)``: the first prompt (the clicks,
        then the middle of each stroke piece); N may be 0 with a lasso
    labels : ``(N,)`` int64, 1 positive / 0 negative
    box : ``(4,)`` float64 ``(row_min, col_min, row_max, col_max)`` of the
        lassos' area (inclusive pixel indices), or None
    mask : ``(H, W)`` bool filled area of the lassos (the mask prompt), or None
    samples : ``(S, 2)`` float64 ``(row, col)``: the strokes sampled every
        :data:`MIN_SPACING` px (the constraints of :meth:`segment`)
    sample_labels : ``(S,)`` int64, 1 object stroke / 0 background stroke
    max_points : most points :meth:`segment` prompts with
    messages : notes for the user (clipped strokes)
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    samples: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    sample_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    max_points: int = DEFAULT_MAX_POINTS
    messages: tuple[str, ...] = ()

    @property
    def multimask(self) -> bool:
        """SAM's rule: three candidates for a lone point, one mask for anything more."""
        return len(self.points) == 1 and self.box is None and self.mask is None

    def predict_kwargs(self) -> dict[str, Any]:
        """The first prompt as keyword arguments of :meth:`~napari_sam.predictor.Predictor.predict`.

        One decoder call without the corrections of :meth:`segment`.
        """
        return {
            "points": self.points if len(self.points) else None,
            "labels": self.labels if len(self.points) else None,
            "box": self.box,
            "mask": self.mask,
            "multimask": self.multimask,
        }

    def keep(self, mask: np.ndarray, points=None, labels=None) -> np.ndarray:
        """The parts of a predicted ``(H, W)`` mask that the prompt selects.

        :func:`napari_sam.masks.keep_prompted_parts` with the first prompt's
        points (or the given ``points``/``labels``) and the box.
        """
        from napari_sam.masks import keep_prompted_parts

        pts: np.ndarray | None = (
            self.points if points is None else np.asarray(points, np.float64).reshape(-1, 2)
        )
        lab = self.labels if points is None else labels
        if pts is not None and not len(pts):
            pts = lab = None
        return keep_prompted_parts(mask, pts, lab, self.box)

    def violations(self, mask: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
        """``(S,)`` float: how deep each sample lies on the wrong side of ``mask`` (0: right side).

        Object samples outside the mask get their distance to it, background
        samples inside it their distance to its edge, in pixels; depths up to
        ``tolerance`` count as 0.
        """
        depth = _error_depth(np.asarray(mask, bool), self.samples, self.sample_labels)
        return np.where(depth > tolerance, depth, 0.0)

    def segment(
        self,
        predictor: Any,
        embedding: Any,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> ScribbleResult:
        """Segment the object: the first prompt, then correction points taken from the strokes.

        Parameters
        ----------
        predictor : :class:`~napari_sam.predictor.Predictor` or any
            :class:`~napari_sam.predictor.PredictorProtocol` object
        embedding : the slice's embedding from ``predictor.embed`` (plain or tiled)
        tolerance : pixels a stroke sample may lie on the wrong side of the
            mask's edge before it is corrected (strokes drawn a pixel past an
            object's edge are forgiven)

        Returns
        -------
        ScribbleResult
            The step with the fewest broken samples (the earliest on ties).
        """
        pts, lab = self.points.copy(), self.labels.copy()
        feedback = None
        best = None
        steps = 0
        while True:
            mask_prompt = self.mask if self.mask is not None else feedback
            single = len(pts) == 1 and self.box is None and mask_prompt is None
            pred = predictor.predict(
                embedding,
                points=pts if len(pts) else None,
                labels=lab if len(pts) else None,
                box=self.box,
                mask=mask_prompt,
                multimask=single,
            )
            steps += 1
            mask = self.keep(np.asarray(pred.best_mask, bool), pts, lab)
            depth = self.violations(mask, tolerance)
            broken = int(np.count_nonzero(depth))
            if best is None or broken < best.violations:
                best = ScribbleResult(mask, pred, pts, lab, broken, len(self.samples), steps)
            if broken == 0 or len(pts) >= self.max_points:
                break
            k = int(np.argmax(depth))
            pts = np.concatenate([pts, self.samples[k : k + 1]])
            lab = np.concatenate([lab, self.sample_labels[k : k + 1]])
            feedback = mask
        return ScribbleResult(
            best.mask, best.prediction, best.points, best.labels, best.violations,
            best.n_samples, steps,
        )



def _error_depth(mask: np.ndarray, samples: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(S,)`` distance of each sample into the wrong side of ``mask`` (0 on the right side).

    Distance transforms on the bounding box of the mask and the samples only
    (it holds every mask pixel and, grown by one, the background next to
    them, so the distances are those of the whole slice).
    """
    from scipy import ndimage as ndi

    if len(samples) == 0:
        return np.zeros(0)
    h, w = mask.shape
    rc = np.clip(np.round(samples).astype(np.int64), 0, [h - 1, w - 1])
    rows = np.flatnonzero(mask.any(axis=1))
    lo, hi = rc.min(axis=0), rc.max(axis=0)
    if rows.size:
        cols = np.flatnonzero(mask.any(axis=0))
        lo = np.minimum(lo, [rows[0], cols[0]])
        hi = np.maximum(hi, [rows[-1], cols[-1]])
    lo = np.maximum(lo - 1, 0)
    hi = np.minimum(hi + 2, [h, w])
    crop = mask[lo[0] : hi[0], lo[1] : hi[1]]
    r, c = rc[:, 0] - lo[0], rc[:, 1] - lo[1]
    inside = crop[r, c]
    depth = np.zeros(len(samples))
    want_in = np.asarray(labels) == 1
    out_pos = want_in & ~inside
    in_neg = ~want_in & inside
    if out_pos.any():
        if crop.any():
            depth[out_pos] = ndi.distance_transform_edt(~crop)[r[out_pos], c[out_pos]]
        else:
            depth[out_pos] = np.inf
    if in_neg.any():
        depth[in_neg] = ndi.distance_transform_edt(crop)[r[in_neg], c[in_neg]]
    return depth



def _samples(piece: np.ndarray) -> np.ndarray:
    """A stroke piece sampled every :data:`MIN_SPACING` px (at most :data:`MAX_SAMPLES`)."""
    length = float(_segment_lengths(piece).sum())
    n = min(MAX_SAMPLES, 1 + int(np.ceil(length / MIN_SPACING)))
    return sample_polyline(piece, n)


def scribble_prompt(
    strokes: Sequence[Stroke],
    shape: tuple[int, int],
    *,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> ScribblePrompt:
    """The prompt of one object from its strokes (and clicks) on a ``shape`` slice.

    Parameters
    ----------
    strokes : the :class:`Stroke` s of this object (see :func:`strokes_from_shapes`,
        :func:`strokes_from_labels`)
    shape : ``(H, W)`` of the slice
    points : ``(K, 2)`` ``(row, col)`` clicks of the same object, kept as they are
    point_labels : ``(K,)`` 1 positive / 0 negative (default: all positive)
    max_points : most points :meth:`ScribblePrompt.segment` prompts with; the
        first prompt (the clicks and one point per stroke piece) must fit

    Returns
    -------
    ScribblePrompt

    Raises
    ------
    ValueError
        A stroke with nothing inside the slice, more strokes and clicks than
        ``max_points``, or no object stroke, positive click or lasso at all.
    """
    from skimage.draw import polygon2mask

    h, w = (int(s) for s in shape)
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or (
        max_points < 1
    ):
        raise ValueError(f"max_points must be an integer >= 1, got {max_points!r}")
    clicks = np.zeros((0, 2)) if points is None else np.asarray(points, np.float64).reshape(-1, 2)
    click_labels = (
        np.ones(len(clicks), np.int64) if point_labels is None
        else np.asarray(point_labels, np.int64).ravel()
    )
    if len(click_labels) != len(clicks):
        raise ValueError(
            f"got {len(clicks)} points but {len(click_labels)} point labels; one label per point"
        )
    messages: list[str] = []
    area = np.zeros((h, w), bool)
    pieces: list[tuple[np.ndarray, bool]] = []
    for stroke in strokes:
        v = _check_vertices(stroke.vertices, stroke.name)[:, :2]
        if stroke.closed and stroke.positive:
            area |= _lasso_area(stroke, v, (h, w), polygon2mask, messages)
            continue
        clipped = clip_polyline(v, (h, w))
        if not clipped:
            raise ValueError(
                f"{_describe(stroke)} lies outside the {h}x{w} slice (rows 0..{h - 1}, "
                f"cols 0..{w - 1}); draw it on the image"
            )
        joined = np.concatenate(clipped)
        if len(joined) != len(v) or not np.allclose(joined, v):
            messages.append(f"{stroke.name} was clipped to the {h}x{w} slice")
        pieces.extend((p, stroke.positive) for p in clipped)
    if len(clicks) + len(pieces) > max_points:
        raise ValueError(
            f"{len(pieces)} stroke pieces and {len(clicks)} clicks do not fit max_points="
            f"{max_points} (each stroke gives at least one point); raise max_points or draw "
            "fewer strokes"
        )
    firsts = [sample_polyline(p, 1) for p, _ in pieces]
    pts = np.concatenate([clicks, *firsts]).reshape(-1, 2)
    labs = np.concatenate([click_labels, [int(pos) for _, pos in pieces]]).astype(np.int64)
    samples = [_samples(p) for p, _ in pieces]
    sample_labels = [np.full(len(s), int(pos), np.int64) for s, (_, pos) in zip(samples, pieces)]
    mask = area if area.any() else None
    if mask is None and not (labs == 1).any():
        raise ValueError(
            "no object prompt: draw at least one object stroke (label 1, positive) or a lasso, "
            "or add a positive click; background strokes alone select nothing"
        )
    return ScribblePrompt(
        points=pts,
        labels=labs,
        box=None if mask is None else _mask_box(mask),
        mask=mask,
        samples=np.concatenate(samples) if samples else np.zeros((0, 2)),
        sample_labels=np.concatenate(sample_labels) if samples else np.zeros(0, np.int64),
        max_points=int(max_points),
        messages=tuple(messages),
    )


def _lasso_area(stroke: Stroke, v: np.ndarray, shape, polygon2mask, messages) -> np.ndarray:
    """The filled, slice-clipped area of a lasso; ValueError when it covers no pixel."""
    h, w = shape
    if stroke.area is not None:
        filled = np.asarray(stroke.area, dtype=bool)
    elif len(v) >= 3:
        filled = polygon2mask((h, w), v)
    else:
        filled = np.zeros((h, w), bool)
    if filled.shape != (h, w):
        raise ValueError(
            f"{stroke.name} has an area of shape {filled.shape}, expected the slice's {(h, w)}"
        )
    if not filled.any():
        raise ValueError(
            f"lasso {_describe(stroke)} encloses no pixel of the {h}x{w} slice; draw it "
            "around an object on the image"
        )
    if ((v < -0.5) | (v > [h - 0.5, w - 0.5])).any():
        messages.append(f"lasso {stroke.name} was cut at the edge of the {h}x{w} slice")
    return filled
