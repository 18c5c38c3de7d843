"""Compact storage and clean-up of 2D object masks (numpy/scipy only).

A :class:`CompactMask` keeps only the mask's bounding box and the runs of
``True`` pixels of the box's row-major (C order) crop, so memory grows with the
object's perimeter, not with the image size. Boxes are half-open
``(row_min, col_min, row_max, col_max)`` in image pixels (see
:mod:`napari_sam.boxes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: 8-connectivity for objects, 4-connectivity for the background (holes), the
#: usual topologically consistent pair.
_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


@dataclass(frozen=True)
class CompactMask:
    """A 2D bool mask stored as its bounding box plus run-length encoding.

    Attributes
    ----------
    bbox : ``(row_min, col_min, row_max, col_max)`` half-open, image pixels
    starts : ``(R,)`` int32 start of each run in the flattened (C order) box crop
    lengths : ``(R,)`` int32 length of each run
    area : number of pixels in the mask
    """

    bbox: tuple[int, int, int, int]
    starts: np.ndarray
    lengths: np.ndarray
    area: int

    @classmethod
    def from_crop(cls, crop: np.ndarray, origin: tuple[int, int] = (0, 0)) -> CompactMask:
        """Encode a bool ``crop`` whose top-left pixel is ``origin`` (trimmed to its bbox)."""
        crop = np.asarray(crop, dtype=bool)
        rows = np.flatnonzero(crop.any(axis=1))
        if rows.size == 0:
            r, c = (int(v) for v in origin)
            empty = np.zeros(0, dtype=np.int32)
            return cls((r, c, r, c), empty, empty, 0)
        cols = np.flatnonzero(crop.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        tight = crop[r0:r1, c0:c1]
        flat = np.concatenate(([False], tight.ravel(), [False])).view(np.int8)
        edges = np.flatnonzero(np.diff(flat))
        starts = edges[0::2].astype(np.int32)
        lengths = (edges[1::2] - edges[0::2]).astype(np.int32)
        bbox = (
            int(origin[0] + r0),
            int(origin[1] + c0),
            int(origin[0] + r1),
            int(origin[1] + c1),
        )
        return cls(bbox, starts, lengths, int(lengths.sum()))

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the bounding box."""
        return (self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1])

    def crop(self) -> np.ndarray:
        """The bool mask inside its bounding box, shape :attr:`shape`."""
        h, w = self.shape
        marks = np.zeros(h * w + 1, dtype=np.int8)
        # runs are separated by at least one background pixel: starts and ends are distinct
        marks[self.starts] = 1
        marks[self.starts + self.lengths] = -1
        return (np.cumsum(marks[:-1], dtype=np.int32) > 0).reshape(h, w)

    def shifted(self, drow: int, dcol: int) -> CompactMask:
        """The same mask moved by ``(drow, dcol)`` pixels (e.g. from crop to image frame)."""
        r0, c0, r1, c1 = self.bbox
        return CompactMask(
            (r0 + drow, c0 + dcol, r1 + drow, c1 + dcol), self.starts, self.lengths, self.area
        )

    def to_dense(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask as a ``shape`` bool array."""
        out = np.zeros(shape, dtype=bool)
        r0, c0, r1, c1 = self.bbox
        out[r0:r1, c0:c1] = self.crop()
        return out


def mask_intersection(a: CompactMask, b: CompactMask) -> int:
    """Number of pixels in both compact masks."""
    r0 = max(a.bbox[0], b.bbox[0])
    c0 = max(a.bbox[1], b.bbox[1])
    r1 = min(a.bbox[2], b.bbox[2])
    c1 = min(a.bbox[3], b.bbox[3])
    if r1 <= r0 or c1 <= c0:
        return 0
    ca = a.crop()[r0 - a.bbox[0] : r1 - a.bbox[0], c0 - a.bbox[1] : c1 - a.bbox[1]]
    cb = b.crop()[r0 - b.bbox[0] : r1 - b.bbox[0], c0 - b.bbox[1] : c1 - b.bbox[1]]
    return int(np.count_nonzero(ca & cb))


def mask_iou(a: CompactMask, b: CompactMask) -> float:
    """Intersection over union of two compact masks (0 when both are empty)."""
    inter = mask_intersection(a, b)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def clean_mask(crop: np.ndarray, min_area: int) -> np.ndarray:
    """Fill small holes and remove small islands of a bool mask crop.

    Holes are background regions (4-connected) enclosed by the mask with fewer
    than ``min_area`` pixels; islands are 8-connected parts of the mask with
    fewer than ``min_area`` pixels. Holes are filled first. ``min_area <= 1``
    returns the crop unchanged.
    """
    from scipy import ndimage

    crop = np.asarray(crop, dtype=bool)
    if min_area <= 1 or not crop.any():
        return crop
    padded = np.pad(crop, 1)
    background, n_bg = ndimage.label(~padded, structure=_FOUR)
    if n_bg > 1:
        sizes = np.bincount(background.ravel())
        outside = background[0, 0]
        small = sizes < min_area
        small[0] = False
        small[outside] = False
        if small.any():
            padded |= small[background]
    objects, n_obj = ndimage.label(padded, structure=_EIGHT)
    if n_obj > 1 or (n_obj == 1 and padded.sum() < min_area):
        sizes = np.bincount(objects.ravel())
        keep = sizes >= min_area
        keep[0] = False
        padded = keep[objects]
    return padded[1:-1, 1:-1]
