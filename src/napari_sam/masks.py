"""Clean-up of a predicted mask against the prompts that asked for it (numpy/scipy only).

SAM's masks sometimes carry stray fragments away from the object: bits of a
neighbouring object or of bright background (the bundled ``micro`` model: 38 of
102 masks from a click on generated nuclei). :func:`keep_prompted_parts` keeps
the parts of the mask that the prompts point at.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["keep_prompted_parts"]

#: 8-connectivity: parts touching at a corner are one part.
_EIGHT = np.ones((3, 3), dtype=bool)


def keep_prompted_parts(
    mask: np.ndarray,
    points: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    box: ArrayLike | None = None,
    gap: int = 1,
) -> np.ndarray:
    """The connected parts of ``mask`` that its prompts select.

    Parameters
    ----------
    mask : ``(Y, X)`` bool
    points : ``(N, 2)`` ``(row, col)`` slice pixels (napari order)
    labels : ``(N,)`` 1 positive / 0 negative (default: all positive)
    box : ``(row_min, col_min, row_max, col_max)``
    gap : parts closer than ``gap + 1`` pixels count as one part (8-connected
        after growing the mask by ``gap`` pixels), so an object cut by a thin
        line stays whole (the default 1 is measured in docs/api.md, "One slice").

    Returns
    -------
    ``(Y, X)`` bool: the parts holding a positive point; without a positive
    point on a part, the parts overlapping ``box``; the mask unchanged when
    neither selects a part (a prompt between parts never empties a mask).
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D (Y, X), got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask
    cols = np.flatnonzero(mask.any(axis=0))
    # work on the mask's bounding box (plus the gap): cheap on large slices
    pad = max(0, int(gap)) + 1
    r_lo, c_lo = max(0, rows[0] - pad), max(0, cols[0] - pad)
    r_hi, c_hi = min(mask.shape[0], rows[-1] + 1 + pad), min(mask.shape[1], cols[-1] + 1 + pad)
    crop = mask[r_lo:r_hi, c_lo:c_hi]
    grown = ndi.binary_dilation(crop, _EIGHT, iterations=int(gap)) if gap > 0 else crop
    parts, n = ndi.label(grown, structure=_EIGHT)
    if n <= 1:
        return mask
    parts[~crop] = 0  # a part is its mask pixels
    keep: set[int] = set()
    if points is not None and np.size(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        lab = np.ones(len(pts), dtype=bool) if labels is None else np.asarray(labels) == 1
        rc = np.round(pts[lab]).astype(np.int64) - [r_lo, c_lo]
        inside = (rc >= 0).all(axis=1) & (rc[:, 0] < crop.shape[0]) & (rc[:, 1] < crop.shape[1])
        keep = {int(parts[r, c]) for r, c in rc[inside]} - {0}
    if not keep and box is not None:
        r0, c0, r1, c1 = (round(float(v)) for v in np.asarray(box).ravel()[:4])
        window = parts[max(0, r0 - r_lo) : max(0, r1 + 1 - r_lo),
                       max(0, c0 - c_lo) : max(0, c1 + 1 - c_lo)]
        keep = set(np.unique(window).tolist()) - {0}
    if not keep:
        return mask
    out = np.zeros_like(mask)
    out[r_lo:r_hi, c_lo:c_hi] = np.isin(parts, sorted(keep))
    return out
