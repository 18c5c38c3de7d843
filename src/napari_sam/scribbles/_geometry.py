"""Polyline geometry of strokes: sampling by arc length, clipping, closed paths (numpy only)."""

from __future__ import annotations

import itertools

import numpy as np

#: A path is a closed lasso when its ends are at most this share of its length apart.
CLOSE_FRACTION = 0.1
#: ... and it encloses at least this share of its squared length (a circle: 1 / 4 pi = 0.08).
MIN_ENCLOSED = 0.01


def _segment_lengths(vertices: np.ndarray) -> np.ndarray:
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    return np.hypot(*np.diff(v, axis=0).T) if len(v) > 1 else np.zeros(0)


def sample_polyline(vertices: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spread by arc length along a polyline, endpoints included.

    Parameters
    ----------
    vertices : ``(M, 2)`` ``(row, col)``, M >= 1
    n : number of points, >= 1; ``n == 1`` gives the middle of the polyline

    Returns
    -------
    ``(n, 2)`` float64 ``(row, col)``
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    if n < 1:
        raise ValueError(f"n must be >= 1 point, got {n}")
    seg = _segment_lengths(v)
    total = float(seg.sum())
    if total == 0.0:
        return np.repeat(v[:1], n, axis=0)
    at = np.array([total / 2.0]) if n == 1 else np.linspace(0.0, total, n)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    return np.stack([np.interp(at, cum, v[:, 0]), np.interp(at, cum, v[:, 1])], axis=1)


def clip_polyline(vertices: np.ndarray, shape: tuple[int, int]) -> list[np.ndarray]:
    """The pieces of a polyline inside the slice ``[0, H - 1] x [0, W - 1]``.

    Each segment is clipped to the rectangle (Liang-Barsky); consecutive
    clipped segments that join form one piece. A single vertex inside the
    slice is a one-vertex piece.

    Returns
    -------
    list of ``(M_i, 2)`` float64 ``(row, col)`` polylines (empty when nothing is inside)
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    hi = np.array([shape[0] - 1.0, shape[1] - 1.0])
    if len(v) == 1:
        inside = bool(((v[0] >= 0) & (v[0] <= hi)).all())
        return [v.copy()] if inside else []
    pieces: list[list[np.ndarray]] = []
    open_piece = False
    for a, b in itertools.pairwise(v):
        clipped = _clip_segment(a, b, hi)
        if clipped is None:
            open_piece = False
            continue
        (p, q), starts_at_a, ends_at_b = clipped
        if open_piece and starts_at_a:
            pieces[-1].append(q)
        else:
            pieces.append([p, q])
        open_piece = ends_at_b
    return [np.array(p) for p in pieces]


def _clip_segment(a: np.ndarray, b: np.ndarray, hi: np.ndarray):
    """Liang-Barsky: the part of segment ``a -> b`` inside ``[0, hi]``, or None."""
    d = b - a
    t0, t1 = 0.0, 1.0
    for axis in range(2):
        for p, q in ((-d[axis], a[axis]), (d[axis], hi[axis] - a[axis])):
            if p == 0.0:
                if q < 0.0:
                    return None
                continue
            t = q / p
            if p < 0.0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
    if t0 > t1:
        return None
    p_, q_ = np.clip(a + t0 * d, 0.0, hi), np.clip(a + t1 * d, 0.0, hi)
    return (p_, q_), t0 == 0.0, t1 == 1.0


def _is_closed(vertices: np.ndarray) -> bool:
    """A path whose ends meet around a non-degenerate area (see :data:`CLOSE_FRACTION`)."""
    v = np.asarray(vertices, dtype=np.float64)
    if len(v) < 3:
        return False
    length = float(_segment_lengths(v).sum())
    if length == 0.0 or np.hypot(*(v[-1] - v[0])) > CLOSE_FRACTION * length:
        return False
    r, c = v[:, 0], v[:, 1]
    area = 0.5 * abs(float(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1))))
    return area >= MIN_ENCLOSED * length**2


def _mask_box(mask: np.ndarray) -> np.ndarray:
    """Inclusive ``(row_min, col_min, row_max, col_max)`` of a non-empty mask (>= 1 px wide)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    h, w = mask.shape
    if r1 == r0:
        r0, r1 = (r0, r0 + 1) if r0 + 1 <= h - 1 else (max(0, r0 - 1), r0)
    if c1 == c0:
        c0, c1 = (c0, c0 + 1) if c0 + 1 <= w - 1 else (max(0, c0 - 1), c0)
    return np.array([r0, c0, r1, c1], dtype=np.float64)


