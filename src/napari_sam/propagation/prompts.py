"""Prompts for slice ``z ± 1`` built from an object's mask on slice ``z``.

Coordinates are napari's ``(row, col)`` pixels of the slice; boxes are
``(row_min, col_min, row_max, col_max)``, as :class:`napari_sam.predictor.Predictor`
expects. Torch-free (numpy/scipy only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: The parts a prompt mode is made of, joined with ``+`` (e.g. ``"box+mask"``).
PROMPT_PARTS = ("box", "points", "neg", "mask")

#: Prompt modes compared in ``benchmarks/propagation_quality.py``.
BENCHMARK_MODES = (
    "box",
    "points",
    "points+neg",
    "mask",
    "box+mask",
    "box+points",
    "points+mask",
    "box+points+mask",
)


def parse_prompt_mode(mode: str) -> frozenset[str]:
    """``"box+mask"`` -> ``{"box", "mask"}``, with a clear error for anything else.

    Valid modes join one or more of ``box``, ``points``, ``mask`` (and
    optionally ``neg``, negative points just outside the previous mask) with
    ``+``, in any order.
    """
    if not isinstance(mode, str):
        raise TypeError(f"prompt_mode must be a string such as 'box+mask', got {mode!r}")
    parts = [p.strip().lower() for p in mode.split("+")]
    unknown = [p for p in parts if p not in PROMPT_PARTS]
    if unknown or not parts:
        raise ValueError(
            f"unknown prompt_mode {mode!r}: use one or more of {', '.join(PROMPT_PARTS)} "
            f"joined with '+'; e.g. {', '.join(repr(m) for m in BENCHMARK_MODES)}"
        )
    found = frozenset(parts)
    if len(found) != len(parts):
        raise ValueError(f"prompt_mode {mode!r} names a part twice")
    if found == {"neg"}:
        raise ValueError(
            "prompt_mode 'neg' has only negative points, which cannot select an object; "
            "combine it, e.g. 'points+neg' or 'box+neg'"
        )
    return found


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are derived from a mask.

    Attributes
    ----------
    parts : frozenset of str
        From :func:`parse_prompt_mode`.
    box_margin : float
        The box is the mask's bounding box grown by this fraction of its
        larger side on every side (at least ``min_margin`` pixels), so that an
        object that grows or drifts between slices still fits.
    min_margin : int
        Smallest margin in pixels (box, negative points).
    n_points : int
        Positive points (interior maxima of the distance transform).
    n_negative : int
        Negative points (``neg``), just outside the grown bounding region.
    """

    parts: frozenset[str]
    box_margin: float = 0.1
    min_margin: int = 2
    n_points: int = 3
    n_negative: int = 4


@dataclass(frozen=True)
class Prompt:
    """One object's prompt for one slice, in the predictor's argument format.

    Attributes
    ----------
    points : ``(N, 2)`` float64 ``(row, col)`` or None
    labels : ``(N,)`` int64, 1 positive / 0 negative, or None
    box : ``(4,)`` float64 ``(row_min, col_min, row_max, col_max)`` or None
    mask : ``(Y, X)`` bool or None
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = None

    @property
    def signature(self) -> tuple[int, bool, bool]:
        """Prompts with equal signatures can be decoded in one batched call."""
        n = 0 if self.points is None else len(self.points)
        return (n, self.box is not None, self.mask is not None)

    @property
    def multimask(self) -> bool:
        """Ask for 3 candidates only for the ambiguous single positive point."""
        return (
            self.box is None
            and self.mask is None
            and self.points is not None
            and len(self.points) == 1
        )


def margin_for(mask: np.ndarray, settings: PromptSettings) -> int:
    """Margin in pixels around the bounding box of ``mask`` (non-empty)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    return max(int(settings.min_margin), int(np.ceil(settings.box_margin * extent)))


def bounding_box(mask: np.ndarray, margin: int) -> np.ndarray | None:
    """``(row_min, col_min, row_max, col_max)`` of ``mask`` grown by ``margin``, clipped.

    None when the mask is empty or the box would have no extent (a slice one
    pixel wide).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    box = np.array(
        [
            max(0, rows[0] - margin),
            max(0, cols[0] - margin),
            min(h - 1, rows[-1] + margin),
            min(w - 1, cols[-1] + margin),
        ],
        dtype=np.float64,
    )
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box


def interior_points(mask: np.ndarray, n: int) -> np.ndarray | None:
    """Up to ``n`` well-separated ``(row, col)`` points deep inside ``mask``.

    The first is the maximum of the Euclidean distance transform (the centre
    of the largest inscribed disk); each further point is the next maximum
    outside the disks of the points already chosen. None for an empty mask.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or n < 1:
        return None
    r0, c0 = rows[0], cols[0]
    crop = np.pad(mask[r0 : rows[-1] + 1, c0 : cols[-1] + 1], 1)
    dist = ndi.distance_transform_edt(crop)
    free = dist.copy()
    rr, cc = np.indices(crop.shape)
    points = []
    for _ in range(n):
        idx = int(np.argmax(free))
        if free.flat[idx] <= 0:
            break
        r, c = divmod(idx, crop.shape[1])
        points.append((r, c))
        radius = max(float(dist[r, c]), 2.0)
        free[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = 0
    pts = np.array(points, dtype=np.float64) + np.array([r0 - 1, c0 - 1], dtype=np.float64)
    return pts


def negative_points(mask: np.ndarray, margin: int, n: int) -> np.ndarray | None:
    """Up to ``n`` background points about ``margin`` pixels outside ``mask``.

    Taken on the ring of pixels at a distance in ``(margin, margin + 2]`` from
    the mask, at the extremes in ``n`` evenly spaced directions around
    the mask's centroid. None when the ring is empty (mask fills the slice).
    """
    if n < 1 or not mask.any():
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    pad = margin + 3
    r0, c0 = max(0, rows[0] - pad), max(0, cols[0] - pad)
    r1, c1 = min(mask.shape[0], rows[-1] + pad + 1), min(mask.shape[1], cols[-1] + pad + 1)
    crop = mask[r0:r1, c0:c1]
    # distance to the mask; the crop's edges are far enough not to matter
    dist = ndi.distance_transform_edt(~crop)
    ring = (dist > margin) & (dist <= margin + 2)
    rr, cc = np.nonzero(ring)
    if rr.size == 0:
        return None
    centre = np.argwhere(crop).mean(axis=0)
    offsets = np.stack([rr - centre[0], cc - centre[1]], axis=1)
    angles = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False) - np.pi / 2
    directions = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    picks = np.unique(np.argmax(offsets @ directions.T, axis=0))
    return np.stack([rr[picks] + r0, cc[picks] + c0], axis=1).astype(np.float64)


def build_prompt(mask: np.ndarray, settings: PromptSettings) -> Prompt | None:
    """The prompt for the next slice from this slice's ``(Y, X)`` bool ``mask``.

    Returns None when no usable prompt can be built (empty mask, or a box
    without extent when the mode has only a box): the caller must then stop,
    never call the model without a prompt.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    parts = settings.parts
    margin = margin_for(mask, settings)
    box = bounding_box(mask, margin) if "box" in parts else None
    pos = interior_points(mask, settings.n_points) if "points" in parts else None
    neg = negative_points(mask, margin, settings.n_negative) if "neg" in parts else None
    points = labels = None
    if pos is not None or (neg is not None and (box is not None or "mask" in parts)):
        chunks = [a for a in (pos, neg) if a is not None]
        points = np.concatenate(chunks, axis=0)
        labels = np.concatenate(
            [np.full(len(a), 1 if a is pos else 0, dtype=np.int64) for a in chunks]
        )
    prompt_mask = mask if "mask" in parts else None
    if box is None and prompt_mask is None and (labels is None or not labels.any()):
        return None
    return Prompt(points=points, labels=labels, box=box, mask=prompt_mask)
