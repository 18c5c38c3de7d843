"""Axis-aligned boxes of 2D masks: areas, IoU, greedy non-maximum suppression.

Pure numpy (no torch, no torchvision).

Box convention
--------------
A box is ``(row_min, col_min, row_max, col_max)`` in pixels of the slice with
*half-open* ends, like :func:`skimage.measure.regionprops` ``bbox``: the box of
a mask covers ``mask[row_min:row_max, col_min:col_max]``, so a single pixel at
``(r, c)`` has the box ``(r, c, r + 1, c + 1)`` and area 1. Arrays of boxes are
``(N, 4)``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def as_boxes(boxes, name: str = "boxes") -> np.ndarray:
    """Check and return ``(N, 4)`` float64 boxes ``(row_min, col_min, row_max, col_max)``."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1 and b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(
            f"{name} must have shape (N, 4) as (row_min, col_min, row_max, col_max), "
            f"got shape {b.shape}"
        )
    inverted = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if inverted.any():
        first = int(np.flatnonzero(inverted)[0])
        raise ValueError(
            f"{name}[{first}] = {b[first].tolist()} is inverted; need row_min <= row_max "
            "and col_min <= col_max"
        )
    return b


def box_area(boxes) -> np.ndarray:
    """``(N,)`` areas of ``(N, 4)`` half-open boxes (0 for empty boxes)."""
    b = as_boxes(boxes)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def box_intersection(a, b) -> np.ndarray:
    """``(N, M)`` intersection areas between the boxes ``a`` ``(N, 4)`` and ``b`` ``(M, 4)``."""
    a = as_boxes(a, "a")
    b = as_boxes(b, "b")
    r0 = np.maximum(a[:, None, 0], b[None, :, 0])
    c0 = np.maximum(a[:, None, 1], b[None, :, 1])
    r1 = np.minimum(a[:, None, 2], b[None, :, 2])
    c1 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(r1 - r0, 0, None) * np.clip(c1 - c0, 0, None)


def box_iou(a, b) -> np.ndarray:
    """``(N, M)`` intersection over union of boxes ``a`` ``(N, 4)`` and ``b`` ``(M, 4)``.

    Pairs whose union is empty (two empty boxes) have IoU 0.
    """
    a = as_boxes(a, "a")
    b = as_boxes(b, "b")
    inter = box_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def nms(boxes, scores, iou_thresh: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Boxes are visited from the highest score down (ties: lower index first);
    a box is kept unless its IoU with an already kept box is *greater* than
    ``iou_thresh``.

    Parameters
    ----------
    boxes : ``(N, 4)`` half-open ``(row_min, col_min, row_max, col_max)``
    scores : ``(N,)`` higher is better
    iou_thresh : suppression threshold in ``[0, 1]``

    Returns
    -------
    ``(K,)`` int64 indices into ``boxes`` of the kept boxes, by decreasing score.
    """
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.shape[0] != b.shape[0]:
        raise ValueError(f"got {b.shape[0]} boxes but {s.shape[0]} scores; give one per box")
    if not 0.0 <= float(iou_thresh) <= 1.0:
        raise ValueError(f"iou_thresh must be in [0, 1], got {iou_thresh}")
    order = np.argsort(-s, kind="stable")
    b = b[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if not alive[i]:
            continue
        keep.append(i)
        rest = np.flatnonzero(alive[i + 1 :]) + i + 1
        if rest.size == 0:
            break
        r = b[rest]
        inter = np.clip(np.minimum(b[i, 2], r[:, 2]) - np.maximum(b[i, 0], r[:, 0]), 0, None)
        inter *= np.clip(np.minimum(b[i, 3], r[:, 3]) - np.maximum(b[i, 1], r[:, 1]), 0, None)
        union = area[i] + area[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        alive[rest[iou > iou_thresh]] = False
    return order[np.asarray(keep, dtype=np.int64)]


def batched_nms(boxes, scores, groups, iou_thresh: float) -> np.ndarray:
    """:func:`nms` within each group separately (boxes of different groups never compete).

    Returns the kept indices of all groups together, by decreasing score.
    """
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).ravel()
    g = np.asarray(groups).ravel()
    if not (len(b) == len(s) == len(g)):
        raise ValueError(
            f"boxes ({len(b)}), scores ({len(s)}) and groups ({len(g)}) must have one entry per box"
        )
    kept = [np.flatnonzero(g == v)[nms(b[g == v], s[g == v], iou_thresh)] for v in np.unique(g)]
    if not kept:
        return np.zeros(0, dtype=np.int64)
    idx = np.concatenate(kept)
    return idx[np.argsort(-s[idx], kind="stable")]


def boxes_from_masks(masks: ArrayLike) -> np.ndarray:
    """``(N, 4)`` int64 half-open boxes of ``(N, H, W)`` bool masks; ``(0, 0, 0, 0)`` if empty."""
    m: np.ndarray = np.asarray(masks, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {m.shape}")
    n, h, w = m.shape
    rows = np.asarray(m.any(axis=2))
    cols = np.asarray(m.any(axis=1))
    out = np.zeros((n, 4), dtype=np.int64)
    has = rows.any(axis=1)
    out[has, 0] = rows[has].argmax(axis=1)
    out[has, 2] = h - rows[has, ::-1].argmax(axis=1)
    out[has, 1] = cols[has].argmax(axis=1)
    out[has, 3] = w - cols[has, ::-1].argmax(axis=1)
    return out


def near_crop_edge(boxes, crop_box, image_shape, atol: float = 1.0) -> np.ndarray:
    """``(N,)`` bool: the box touches an edge of ``crop_box`` that is not an image edge.

    Such masks were cut by the crop and are dropped (the full object is found
    in a larger crop). All boxes are half-open, in image pixels.
    """
    b = as_boxes(boxes)
    r0, c0, r1, c1 = (float(v) for v in crop_box)
    h, w = image_shape[:2]
    near = np.zeros(len(b), dtype=bool)
    if r0 > 0:
        near |= b[:, 0] <= r0 + atol
    if c0 > 0:
        near |= b[:, 1] <= c0 + atol
    if r1 < h:
        near |= b[:, 2] >= r1 - atol
    if c1 < w:
        near |= b[:, 3] >= c1 - atol
    return near


def overlapping_pairs(boxes) -> np.ndarray:
    """``(P, 2)`` int64 index pairs ``i < j`` of boxes whose intersection has positive area.

    Sort-and-sweep along rows, so the work grows with the number of
    overlapping pairs rather than with ``N**2`` for scattered boxes.
    """
    b = as_boxes(boxes)
    n = len(b)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(b[:, 0], kind="stable")
    sb = b[order]
    # for each box, the boxes starting (in sorted order) before it ends
    stop = np.searchsorted(sb[:, 0], sb[:, 2], side="left")
    pairs = []
    for i in range(n):
        j = np.arange(i + 1, max(i + 1, stop[i]))
        if j.size == 0:
            continue
        r = sb[j]
        ok = (np.minimum(sb[i, 2], r[:, 2]) > np.maximum(sb[i, 0], r[:, 0])) & (
            np.minimum(sb[i, 3], r[:, 3]) > np.maximum(sb[i, 1], r[:, 1])
        )
        if ok.any():
            pairs.append(np.stack([np.full(ok.sum(), i), j[ok]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    p = order[np.concatenate(pairs)]
    return np.sort(p, axis=1)
