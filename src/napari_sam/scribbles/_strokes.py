"""Strokes from napari Shapes data and from painted scribble labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.scribbles._geometry import _is_closed, _segment_lengths

#: Values of a scribble label image.
OBJECT_VALUE, BACKGROUND_VALUE = 1, 2
#: napari shape types read as strokes (others are box and mask prompts of the annotator).
STROKE_TYPES = ("path", "line", "polygon")


@dataclass(frozen=True, eq=False)
class Stroke:
    """One stroke on a slice.

    Attributes
    ----------
    vertices : ``(M, 2)`` float64 ``(row, col)`` slice pixels, M >= 1
    positive : True for an object stroke, False for a background stroke
    closed : True for a lasso (see the module doc); its area is the polygon
        of ``vertices`` unless ``area`` is given
    area : ``(H, W)`` bool filled area of a painted loop, or None
    name : how messages call it, e.g. ``"shape 3"`` or ``"painted object stroke 2"``
    """

    vertices: np.ndarray
    positive: bool = True
    closed: bool = False
    area: np.ndarray | None = field(default=None, repr=False)
    name: str = "stroke"

    @property
    def length(self) -> float:
        """Arc length of the polyline in pixels."""
        return float(_segment_lengths(self.vertices).sum())



def _describe(stroke: Stroke) -> str:
    v = stroke.vertices
    first, last = np.round(v[0], 1).tolist(), np.round(v[-1], 1).tolist()
    where = f"at (row, col) {first}" if len(v) == 1 else f"from (row, col) {first} to {last}"
    return f"{stroke.name} ({len(v)} vertices {where})"



def _check_vertices(vertices: Any, name: str) -> np.ndarray:
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim == 1 and v.size == 2:
        v = v[None]
    if v.ndim != 2 or v.shape[1] < 2 or len(v) == 0:
        raise ValueError(
            f"{name} must be (M, 2) (row, col) vertices (or (M, D) with the slice's "
            f"leading coordinates first), got shape {v.shape}"
        )
    if not np.isfinite(v).all():
        raise ValueError(f"{name} has NaN or infinite vertices: {v.tolist()}")
    return v


def strokes_from_shapes(
    data: Sequence[Any],
    shape_types: Sequence[str] | str,
    positive: Sequence[bool] | bool = True,
    *,
    slice_index: Sequence[int] | None = None,
) -> list[Stroke]:
    """Strokes from napari Shapes data: ``path``/``line`` (open or closed), ``polygon`` (lasso).

    Parameters
    ----------
    data : one ``(M, D)`` vertex array per shape, in the image's data
        coordinates (the annotator maps world to data first); the last two
        columns are ``(row, col)``, the first ``D - 2`` the slice's leading
        indices (``(z, row, col)`` on a 3D image)
    shape_types : one napari shape type per shape (or one for all); shapes of
        other types (rectangles, ellipses) are skipped: they are box and mask
        prompts of the annotator
    positive : per shape (or one for all): object (True) or background (False) stroke
    slice_index : the displayed slice's leading indices (one per leading
        axis); required when ``D > 2``, and every vertex must lie on that slice

    Returns
    -------
    list of :class:`Stroke` named ``"shape i"`` (i: the index in ``data``)

    Raises
    ------
    ValueError
        Bad vertices, mismatched lengths, or a stroke on another slice than ``slice_index``.
    """
    n = len(data)
    types = [shape_types] * n if isinstance(shape_types, str) else list(shape_types)
    signs = [bool(positive)] * n if isinstance(positive, (bool, np.bool_)) else list(positive)
    if len(types) != n or len(signs) != n:
        raise ValueError(
            f"got {n} shapes, {len(types)} shape types and {len(signs)} positive flags; "
            "give one of each per shape"
        )
    strokes = []
    for i, (verts, kind, sign) in enumerate(zip(data, types, signs)):
        if kind not in STROKE_TYPES:
            continue
        name = f"shape {i}"
        v = _check_vertices(verts, name)
        lead = v.shape[1] - 2
        if lead:
            if slice_index is None or len(slice_index) != lead:
                raise ValueError(
                    f"{name} has {v.shape[1]} coordinates per vertex; pass slice_index with "
                    f"its {lead} leading index(es) (the displayed slice)"
                )
            on = np.round(v[:, :lead]).astype(np.int64)
            want = np.asarray(slice_index, dtype=np.int64)
            if not (on == want).all():
                bad = on[np.flatnonzero(~(on == want).all(axis=1))[0]].tolist()
                raise ValueError(
                    f"{name} lies on slice {bad}, not on the displayed slice "
                    f"{want.tolist()}; draw it on the displayed slice"
                )
            v = v[:, lead:]
        closed = kind == "polygon" or (kind == "path" and _is_closed(v))
        strokes.append(Stroke(v[:, :2].copy(), bool(sign), closed, None, name))
    return strokes


def strokes_from_labels(scribble: np.ndarray) -> list[Stroke]:
    """Strokes painted into a ``(H, W)`` scribble label image (1 = object, 2 = background).

    Each 8-connected part of a value is one stroke. A part that encloses
    background (a painted loop) on the object is a lasso whose area is the
    part with its holes filled; any other part becomes the polyline of its
    skeleton's longest path (branches of a self-crossing scribble are
    dropped; a dot is a single point). Other values are ignored.

    Returns
    -------
    list of :class:`Stroke` named ``"painted object stroke i"`` /
    ``"painted background stroke i"``
    """
    from scipy import ndimage as ndi

    lab = np.asarray(scribble)
    if lab.ndim != 2:
        raise ValueError(f"the scribble labels must be one (H, W) slice, got shape {lab.shape}")
    if lab.dtype.kind not in "biu":
        raise ValueError(
            f"the scribble labels must be integers (1 object, 2 background), got {lab.dtype}"
        )
    strokes = []
    eight = np.ones((3, 3), bool)
    for value, positive, word in ((OBJECT_VALUE, True, "object"),
                                  (BACKGROUND_VALUE, False, "background")):
        parts, _ = ndi.label(lab == value, structure=eight)
        for k, sl in enumerate(ndi.find_objects(parts), start=1):
            part = parts[sl] == k
            origin = np.array([sl[0].start, sl[1].start], dtype=np.float64)
            name = f"painted {word} stroke {k}"
            filled = ndi.binary_fill_holes(part)
            if positive and np.count_nonzero(filled) > np.count_nonzero(part):
                area = np.zeros(lab.shape, bool)
                area[sl] = filled
                centre = np.argwhere(part).mean(axis=0) + origin
                strokes.append(Stroke(centre[None], True, True, area, name))
                continue
            path = _skeleton_path(part) + origin
            strokes.append(Stroke(path, positive, False, None, name))
    return strokes


def _skeleton_path(part: np.ndarray) -> np.ndarray:
    """``(M, 2)`` pixel centres along the longest path of a blob's skeleton."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from skimage.morphology import skeletonize

    skel = skeletonize(part) if part.size > 1 else part
    pix = np.argwhere(skel if skel.any() else part)
    if len(pix) == 1:
        return pix.astype(np.float64)
    index = -np.ones(part.shape, np.int64)
    index[pix[:, 0], pix[:, 1]] = np.arange(len(pix))
    rows, cols, weights = [], [], []
    h, w = part.shape
    for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
        r, c = pix[:, 0] + dr, pix[:, 1] + dc
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        j = np.full(len(pix), -1)
        j[ok] = index[r[ok], c[ok]]
        keep = j >= 0
        rows.append(np.flatnonzero(keep))
        cols.append(j[keep])
        weights.append(np.full(int(keep.sum()), np.hypot(dr, dc)))
    graph = coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(pix), len(pix)),
    ).tocsr()
    dist = dijkstra(graph, directed=False, indices=0)
    far = int(np.argmax(np.where(np.isfinite(dist), dist, -1)))
    dist, pred = dijkstra(graph, directed=False, indices=far, return_predecessors=True)
    end = int(np.argmax(np.where(np.isfinite(dist), dist, -1)))
    order = [end]
    while order[-1] != far:
        order.append(int(pred[order[-1]]))
    return pix[order[::-1]].astype(np.float64)


