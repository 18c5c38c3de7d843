"""The "faded" stop rule: an object's contrast against its surroundings, relative to its seed.

Out-of-focus light above and below a fluorescent nucleus looks like a dim,
blurred copy of it, and a model prompted with the previous slice's mask keeps
segmenting it for a slice or more past the object's end. What changes is the
contrast: the mask's mean intensity minus the median of a thin ring around it
falls as the object fades out of the focal plane. A direction stops
("faded") when that contrast drops below ``fade_threshold`` times the
contrast of the object on its keyframe.

The measure is signed, so dark objects on a bright background (contrast < 0
on the keyframe) work alike; the median of the ring ignores a touching
neighbour that covers less than half of it. Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Ring width in pixels around the mask used as the local background.
RING_WIDTH = 3


def intensity_plane(image: np.ndarray) -> np.ndarray:
    """``(Y, X)`` float32 intensity of a slice ``(Y, X)`` or ``(Y, X, C)`` (channel mean)."""
    data = np.asarray(image, dtype=np.float32)
    return data.mean(axis=-1) if data.ndim == 3 else data


def object_contrast(plane: np.ndarray, mask: np.ndarray, ring: int = RING_WIDTH) -> float:
    """Mean of ``plane`` inside ``mask`` minus the median of a ``ring``-pixel band around it.

    Works on the mask's bounding box grown by ``ring`` (cost independent of the
    slice size). NaN for an empty mask or when the band is empty (the mask
    fills the slice).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return float("nan")
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(0, rows[0] - ring), min(mask.shape[0], rows[-1] + ring + 1)
    c0, c1 = max(0, cols[0] - ring), min(mask.shape[1], cols[-1] + ring + 1)
    m = mask[r0:r1, c0:c1]
    band = ndi.binary_dilation(m, iterations=ring) & ~m
    if not band.any():
        return float("nan")
    crop = plane[r0:r1, c0:c1]
    return float(crop[m].mean() - np.median(crop[band]))


def faded(contrast: float, reference: float, threshold: float) -> bool:
    """True when ``contrast`` fell below ``threshold`` times the keyframe's ``reference``.

    Never fades when the rule is off (``threshold`` 0) or the reference is not
    a usable non-zero number.
    """
    if threshold <= 0 or not np.isfinite(reference) or reference == 0:
        return False
    if not np.isfinite(contrast):
        return False
    return contrast / reference < threshold
