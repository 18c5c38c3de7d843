"""From point and shape layer data to per-object SAM prompts of one slice.

Free of Qt, napari and torch: inputs are the arrays a napari Points / Shapes
layer holds (``data``, the ``positive`` feature, ``shape_type``) and affine
matrices (see :mod:`.slicing`) that take each layer's data coordinates to the
image's data coordinates.

Which slice a prompt belongs to
-------------------------------
A point (or the first vertex of a shape) is mapped to image data coordinates;
its leading coordinates rounded to the nearest pixel are its slice index. Only
prompts whose slice index equals the requested one are used; the others are
ignored for that slice.

How prompts become objects
--------------------------
* Each rectangle is one object with a box prompt
  ``(row_min, col_min, row_max, col_max)``.
* Each polygon or ellipse is one object with a mask prompt (the shape
  rasterized on the slice: pixels whose centre lies inside) plus the mask's
  bounding box as a box prompt (SAM's mask-only prompts are weak).
* Lines and paths are ignored (with a message), unless ``join`` is given: then
  they are strokes that ``join`` reads itself (see below).
* A point inside a rectangle, polygon or ellipse joins that shape's object
  (the first such shape), positive or negative.
* The remaining points form one object when ``batch=False`` (if at least one
  of them is positive); with ``batch=True`` every remaining positive point is
  its own object and every remaining negative point is added to each of them.
* Points outside the slice (beyond half a pixel) are ignored, with a message.
* ``join`` (scribbles, a label being refined: :mod:`.scribbling`) takes the
  remaining points instead: ``join(rows_cols, labels, messages)`` returns the
  objects they become together with the slice's strokes, and the points it
  leaves as ordinary points.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.annotation.layers import STROKE_SHAPES
from napari_sam.annotation.slicing import apply_affine, nearest_index
from napari_sam.contract import Prediction, as_predictor

__all__ = [
    "BOX_TYPES",
    "MASK_TYPES",
    "ObjectPrompt",
    "SlicePrompts",
    "collect_slice_prompts",
    "decode_objects",
    "prompts_on_slice",
    "rasterize_shape",
]

#: napari shape types used as box prompts.
BOX_TYPES = ("rectangle",)
#: napari shape types used as mask prompts.
MASK_TYPES = ("polygon", "ellipse")


@dataclass(frozen=True, eq=False)
class ObjectPrompt:
    """The prompts of one object on one slice, in ``(row, col)`` slice pixels.

    Attributes
    ----------
    points : ``(N, 2)`` float64 ``(row, col)``; N may be 0
    labels : ``(N,)`` int64, 1 positive / 0 negative
    box : ``(4,)`` float64 ``(row_min, col_min, row_max, col_max)`` or None
    mask : ``(Y, X)`` bool mask prompt or None
    source : what made the object: ``"points"``, ``"rectangle"``, ``"polygon"``, ``"ellipse"``
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    source: str = "points"

    @property
    def signature(self) -> tuple[int, bool, bool]:
        """``(n_points, has_box, has_mask)``: objects with equal signatures decode in one batch."""
        return (len(self.points), self.box is not None, self.mask is not None)


@dataclass(frozen=True)
class SlicePrompts:
    """The objects to segment on one slice, and messages about ignored prompts.

    Attributes
    ----------
    slice_index : the slice (one int per leading axis)
    objects : one :class:`ObjectPrompt` per object, shapes first (in layer order), then points
    messages : human-readable notes (ignored prompts, negative-only points...)
    n_points, n_shapes : prompts of any kind found on this slice
    """

    slice_index: tuple[int, ...]
    objects: tuple[ObjectPrompt, ...] = ()
    messages: tuple[str, ...] = ()
    n_points: int = 0
    n_shapes: int = 0
    point_rows: tuple[int, ...] = field(default=(), repr=False)
    shape_rows: tuple[int, ...] = field(default=(), repr=False)


def prompts_on_slice(
    coords: np.ndarray, to_image: np.ndarray, n_lead: int, slice_index: tuple[int, ...]
) -> np.ndarray:
    """Boolean ``(N,)``: which of the ``(N, D)`` layer-data ``coords`` lie on ``slice_index``."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    if n_lead == 0:
        return np.ones(coords.shape[0], dtype=bool)
    image = apply_affine(to_image, coords)
    lead = nearest_index(image[:, :n_lead])
    return np.all(lead == np.asarray(slice_index, dtype=np.int64), axis=1)


def rasterize_shape(
    vertices_rc: np.ndarray, shape_type: str, slice_shape: tuple[int, int]
) -> np.ndarray:
    """Rasterize a polygon or ellipse given by ``(M, 2)`` ``(row, col)`` vertices.

    An ellipse is given as napari stores it: the 4 corners of its (possibly
    rotated) bounding box, in order. Returns a ``slice_shape`` bool mask of
    the pixels whose centres lie inside.
    """
    from skimage.draw import polygon2mask

    verts = np.asarray(vertices_rc, dtype=np.float64)
    if shape_type == "ellipse":
        if verts.shape[0] != 4:
            raise ValueError(f"an ellipse needs its 4 bounding-box corners, got {verts.shape[0]}")
        centre = verts.mean(axis=0)
        a = (verts[1] - verts[0]) / 2.0
        b = (verts[3] - verts[0]) / 2.0
        t = np.linspace(0.0, 2.0 * np.pi, 73)[:-1, None]
        verts = centre + np.cos(t) * a + np.sin(t) * b
    elif shape_type != "polygon":
        raise ValueError(f"only polygons and ellipses are rasterized, got {shape_type!r}")
    if verts.shape[0] < 3:
        return np.zeros(slice_shape, dtype=bool)
    return polygon2mask(slice_shape, verts)


def _box_of(verts_rc: np.ndarray, slice_shape: tuple[int, int]) -> np.ndarray | None:
    h, w = slice_shape
    lo = verts_rc.min(axis=0)
    hi = verts_rc.max(axis=0)
    if hi[0] < -0.5 or hi[1] < -0.5 or lo[0] > h - 0.5 or lo[1] > w - 0.5:
        return None
    lo = np.clip(lo, 0, [h - 1, w - 1])
    hi = np.clip(hi, 0, [h - 1, w - 1])
    if hi[0] <= lo[0] or hi[1] <= lo[1]:
        return None
    return np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float64)


def _mask_box(mask: np.ndarray) -> np.ndarray | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    # a one-pixel-wide mask still needs a non-empty box
    r1, c1 = max(r1, r0 + 1), max(c1, c0 + 1)
    h, w = mask.shape
    if r1 > h - 1:
        r0, r1 = max(0, h - 2), h - 1
    if c1 > w - 1:
        c0, c1 = max(0, w - 2), w - 1
    return np.array([r0, c0, r1, c1], dtype=np.float64)


def collect_slice_prompts(
    slice_index: Sequence[int],
    slice_shape: tuple[int, int],
    *,
    n_lead: int,
    points: Any = None,
    positive: Any = None,
    points_to_image: np.ndarray | None = None,
    shapes: Sequence[Any] = (),
    shape_types: Sequence[str] = (),
    shapes_to_image: np.ndarray | None = None,
    batch: bool = False,
    join: Any = None,
) -> SlicePrompts:
    """Collect the objects to segment on one slice from point and shape layer data.

    Parameters
    ----------
    slice_index : tuple of int
        One int per leading axis of the image (``()`` for 2D images).
    slice_shape : ``(Y, X)``
        Shape of the image's slices.
    n_lead : int
        Number of leading axes (image ``ndim - 2``).
    points : ``(N, D)`` array
        Point coordinates in the points layer's data coordinates (``Points.data``),
        ``D = n_lead + 2``.
    positive : ``(N,)`` bool
        True for foreground points (default: all True).
    points_to_image, shapes_to_image : ``(D+1, D+1)`` affine or None
        Maps the layer's data coordinates to the image's data coordinates
        (identity when None), e.g. ``image_world_to_data @ layer_data_to_world``.
    shapes : sequence of ``(M_i, D)`` arrays
        Shape vertices (``Shapes.data``).
    shape_types : sequence of str
        ``Shapes.shape_type``.
    batch : bool
        Every free positive point is its own object (see module docstring).
    join : callable, optional
        ``join(rows_cols, labels, messages) -> (objects, rows_cols, labels)``:
        takes the points outside the shapes (strokes, a refined label; see
        the module docstring); lines and paths are then not reported.

    Returns
    -------
    SlicePrompts
    """
    index = tuple(int(i) for i in slice_index)
    h, w = slice_shape
    d = n_lead + 2
    eye = np.eye(d + 1)
    p2i = eye if points_to_image is None else np.asarray(points_to_image, dtype=np.float64)
    s2i = eye if shapes_to_image is None else np.asarray(shapes_to_image, dtype=np.float64)
    messages: list[str] = []

    pts = np.zeros((0, d)) if points is None else np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        pts = pts.reshape(0, d)
    if pts.ndim != 2 or pts.shape[1] != d:
        raise ValueError(f"points must have shape (N, {d}), got {pts.shape}")
    pos = np.ones(len(pts), dtype=bool) if positive is None else np.asarray(positive, dtype=bool)
    if pos.shape != (len(pts),):
        raise ValueError(f"positive must have shape ({len(pts)},), got {pos.shape}")
    if len(shapes) != len(shape_types):
        raise ValueError(f"got {len(shapes)} shapes but {len(shape_types)} shape types")

    # ---- points of this slice, in (row, col) slice pixels
    on = prompts_on_slice(pts, p2i, n_lead, index)
    rows = np.flatnonzero(on)
    rc = apply_affine(p2i, pts[rows])[:, n_lead:] if rows.size else np.zeros((0, 2))
    inside = (rc[:, 0] >= -0.5) & (rc[:, 0] < h - 0.5) & (rc[:, 1] >= -0.5) & (rc[:, 1] < w - 0.5)
    if not inside.all():
        bad = rc[~inside]
        messages.append(
            f"{len(bad)} point(s) outside the {h}x{w} slice were ignored "
            f"(row, col): {np.round(bad, 1).tolist()}"
        )
    rc = np.clip(rc[inside], 0, [h - 1, w - 1])
    lab = pos[rows][inside].astype(np.int64)
    n_points = len(rows)

    # ---- shapes of this slice
    objects: list[ObjectPrompt] = []
    regions: list[tuple[str, np.ndarray]] = []  # ("box", box) or ("mask", mask) per object
    shape_rows: list[int] = []
    for k, (verts, kind) in enumerate(zip(shapes, shape_types)):
        verts = np.asarray(verts, dtype=np.float64)
        if verts.ndim != 2 or verts.shape[1] != d or len(verts) == 0:
            raise ValueError(f"shape {k} vertices must have shape (M, {d}), got {verts.shape}")
        if not prompts_on_slice(verts[:1], s2i, n_lead, index)[0]:
            continue
        shape_rows.append(k)
        vrc = apply_affine(s2i, verts)[:, n_lead:]
        if kind in BOX_TYPES:
            box = _box_of(vrc, (h, w))
            if box is None:
                messages.append(f"rectangle {k} is empty or outside the slice; ignored")
                continue
            objects.append(ObjectPrompt(np.zeros((0, 2)), np.zeros(0, np.int64), box=box,
                                        source=kind))
            regions.append(("box", box))
        elif kind in MASK_TYPES:
            mask = rasterize_shape(vrc, kind, (h, w))
            box = _mask_box(mask)
            if box is None:
                messages.append(f"{kind} {k} covers no pixel centre of the slice; ignored")
                continue
            objects.append(ObjectPrompt(np.zeros((0, 2)), np.zeros(0, np.int64), box=box,
                                        mask=mask, source=kind))
            regions.append(("mask", mask))
        elif join is None or kind not in STROKE_SHAPES:
            messages.append(
                f"{kind} {k} ignored: use points, rectangles (box prompts), polygons or ellipses"
            )

    # ---- points inside a shape join that shape's object
    owner = np.full(len(rc), -1, dtype=np.int64)
    ri = nearest_index(rc).reshape(-1, 2)
    for j, (kind, region) in enumerate(regions):
        free = owner < 0
        if kind == "box":
            hit = (
                (rc[:, 0] >= region[0]) & (rc[:, 0] <= region[2])
                & (rc[:, 1] >= region[1]) & (rc[:, 1] <= region[3])
            )
        else:
            hit = region[ri[:, 0], ri[:, 1]] if len(ri) else np.zeros(0, dtype=bool)
        owner[free & hit] = j
    for j in range(len(objects)):
        sel = owner == j
        if sel.any():
            obj = objects[j]
            objects[j] = ObjectPrompt(rc[sel], lab[sel], box=obj.box, mask=obj.mask,
                                      source=obj.source)

    # ---- remaining points
    free = owner < 0
    free_rc, free_lab = rc[free], lab[free]
    if join is not None:  # strokes / a refined label take the points they belong with
        joined, free_rc, free_lab = join(free_rc, free_lab, messages)
        objects.extend(joined)
    n_pos = int(free_lab.sum())
    if len(free_rc):
        if n_pos == 0:
            if objects:
                messages.append(
                    f"{len(free_rc)} negative point(s) outside every shape were ignored"
                )
            else:
                messages.append(
                    "only negative points on this slice: add at least one positive point "
                    "(or a box) to say which object to segment"
                )
        elif batch:
            neg = free_lab == 0
            for i in np.flatnonzero(free_lab == 1):
                p = np.concatenate([free_rc[i : i + 1], free_rc[neg]])
                lbl = np.concatenate([[1], np.zeros(int(neg.sum()), np.int64)])
                objects.append(ObjectPrompt(p, lbl.astype(np.int64)))
        else:
            objects.append(ObjectPrompt(free_rc, free_lab))

    return SlicePrompts(
        slice_index=index,
        objects=tuple(objects),
        messages=tuple(messages),
        n_points=n_points,
        n_shapes=len(shape_rows),
        point_rows=tuple(int(r) for r in rows),
        shape_rows=tuple(shape_rows),
    )


def decode_objects(
    predictor: Any, embedding: Any, objects: Sequence[ObjectPrompt], *, multimask: bool,
    quick: bool = False,
) -> list[Prediction]:
    """Decode every object against one slice embedding; one prediction per object.

    The objects go through the predictor contract's
    :meth:`~napari_sam.contract.BasePredictor.predict_objects` (objects with
    the same :attr:`ObjectPrompt.signature` in one ``predict_batch`` call; a
    predictor with only ``predict`` is lifted by
    :func:`~napari_sam.contract.as_predictor` and called per object). An object
    with a ``decode(predictor, embedding)`` method (a scribble) decodes itself.

    ``quick`` decodes without optional second passes (the zoom into small
    objects, :meth:`~napari_sam.contract.BasePredictor.quick`): hover previews.

    Returns
    -------
    list of :class:`~napari_sam.contract.Prediction`, in the order of ``objects``.
    """
    results: list[Any] = [None] * len(objects)
    plain: list[int] = []
    for i, obj in enumerate(objects):
        if hasattr(obj, "decode"):  # scribbles: their own decoding (correction points)
            results[i] = obj.decode(predictor, embedding)
        else:
            plain.append(i)
    if plain:
        lifted = as_predictor(predictor, need_embed=False)
        with lifted.quick() if quick else nullcontext():
            preds = lifted.predict_objects(embedding, [objects[i] for i in plain],
                                           multimask=multimask)
        for i, pred in zip(plain, preds):
            results[i] = pred
    return results
