"""Mask helpers of propagation: overlap, nesting, clean-up, motion (numpy/scipy only)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: A mask counts as nested in its predecessor (a shrinking cap, exempt from the IoU
#: rule) when this share of the smaller one's pixels lies inside the other.
NESTED_FRACTION = 0.75

__all__ = [
    "NESTED_FRACTION",
    "centroid",
    "iou",
    "keep_connected",
    "nested",
    "shift_mask",
    "step_motion",
    "touches_border",
]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def nested(mask: np.ndarray, previous: list[np.ndarray]) -> bool:
    """True when the smaller of ``mask`` and a previous mask lies mostly inside the other.

    An object's cross-section shrinks fast near its top and bottom (caps): the
    IoU with the previous slice is then low although the object is the same.
    Such nested changes are left to the area rules (``min_area``, ``max_growth``).
    """
    area = np.count_nonzero(mask)
    for prev in previous:
        smaller = min(area, np.count_nonzero(prev))
        if smaller and np.count_nonzero(mask & prev) >= NESTED_FRACTION * smaller:
            return True
    return False


def keep_connected(mask: np.ndarray, reference: np.ndarray, margin: int) -> np.ndarray:
    """Drop the parts of ``mask`` that do not touch ``reference`` grown by ``margin``.

    SAM sometimes adds far-away fragments; an object moves little between
    neighbouring slices. When no part touches, the mask is returned unchanged
    (the IoU rule then decides).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    labelled, n = ndi.label(mask[box])
    if n <= 1:
        return mask
    ref = reference
    if margin > 0:  # grow the reference only near the mask's bounding box
        r0, c0 = max(0, rows[0] - margin), max(0, cols[0] - margin)
        big = (slice(r0, rows[-1] + 1 + margin), slice(c0, cols[-1] + 1 + margin))
        grown = np.zeros_like(reference)
        grown[big] = ndi.binary_dilation(reference[big], iterations=margin)
        ref = grown
    keep = np.unique(labelled[ref[box] & mask[box]])
    keep = keep[keep != 0]
    if keep.size == 0 or keep.size == n:
        return mask
    out = np.zeros_like(mask)
    out[box] = np.isin(labelled, keep)
    return out


def centroid(mask: np.ndarray) -> np.ndarray | None:
    """``(row, col)`` centre of mass of a bool mask, None when it is empty."""
    rows, cols = np.nonzero(mask)
    return None if rows.size == 0 else np.array([rows.mean(), cols.mean()])


def touches_border(mask: np.ndarray) -> bool:
    """Whether a ``(Y, X)`` mask has pixels on the slice's edge (an object leaving it)."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def shift_mask(mask: np.ndarray, shift) -> np.ndarray:
    """``mask`` moved by ``shift`` = ``(rows, cols)`` (rounded to pixels); what leaves the
    slice is lost, what enters is False."""
    dr, dc = (round(float(v)) for v in shift)
    if dr == 0 and dc == 0:
        return mask
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dr) >= h or abs(dc) >= w:
        return out
    out[max(dr, 0) : h + min(dr, 0), max(dc, 0) : w + min(dc, 0)] = mask[
        max(-dr, 0) : h - max(dr, 0), max(-dc, 0) : w - max(dc, 0)
    ]
    return out


def step_motion(previous: np.ndarray, mask: np.ndarray, velocity: np.ndarray | None):
    """The object's motion per step: the shift of its centre from ``previous`` to
    ``mask``; the last ``velocity`` kept while either touches the slice's edge (an
    object entering or leaving moves its visible centre by more than it moves)."""
    if touches_border(previous) or touches_border(mask):
        return velocity
    a, b = centroid(previous), centroid(mask)
    return velocity if a is None or b is None else b - a
