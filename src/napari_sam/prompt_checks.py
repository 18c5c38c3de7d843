"""Checks of what :class:`~napari_sam.predictor.Predictor` is given: device, points, boxes.

Each refuses a bad value with a ``ValueError`` that names it and says what is
expected, instead of a silent wrong result (a NaN point gave NaN scores and an
empty mask) or an error from deep inside torch or numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_device(device: Any) -> None:
    """Raise ``ValueError`` unless torch can use ``device`` (``"auto"`` always passes).

    ``"cuda"`` on a torch built without CUDA (or without a visible GPU), a CUDA
    index beyond the GPUs, ``"mps"`` off Apple silicon and unknown names are
    refused with what to use instead.
    """
    import torch

    name = str(device)
    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device {name!r} is unknown: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU is visible"
            )
            raise ValueError(
                f"device {name!r}: {why} (torch {torch.__version__}); use device 'cpu' "
                "(or 'auto', which picks a GPU when there is one)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r}: there are {torch.cuda.device_count()} CUDA GPU(s), "
                f"numbered from 0; use 'cuda:0'"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"device {name!r}: Apple MPS is not available on this machine; use 'cpu' "
                "(or 'auto')"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device {name!r} is not supported: use 'auto', 'cpu', 'cuda' or 'mps'")


def _finite(values: np.ndarray, what: str) -> None:
    if not np.isfinite(values).all():
        bad = values[~np.isfinite(values).all(axis=-1)] if values.ndim > 1 else values
        raise ValueError(
            f"{what} {bad.tolist()} contain NaN or infinite coordinates; give finite "
            "pixel coordinates of the slice"
        )


def check_points(
    points: Any, labels: Any, original_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 2)`` float64 ``(row, col)`` points and ``(N,)`` int64 labels, checked.

    Raises
    ------
    ValueError
        Wrong shape, NaN/infinite coordinates, points outside the slice,
        labels other than 0/1 or not one per point.
    """
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"points must be numbers (row, col), got {points!r}") from err
    if pts.ndim == 1 and pts.size == 2:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2) as (row, col), got {pts.shape}")
    _finite(pts, "points")
    if labels is None:
        lab = np.ones(len(pts), dtype=np.int64)
    else:
        raw = np.asarray(labels).ravel()
        if raw.dtype.kind == "f" and not (np.isfinite(raw).all() and (raw == np.round(raw)).all()):
            raise ValueError(f"labels must be 1 (positive) or 0 (negative), got {raw.tolist()}")
        lab = raw.astype(np.int64)
        if lab.shape[0] != pts.shape[0]:
            raise ValueError(
                f"got {pts.shape[0]} points but {lab.shape[0]} labels; give one label "
                "(1 positive, 0 negative) per point"
            )
        if not np.isin(lab, (0, 1)).all():
            raise ValueError(f"labels must be 1 (positive) or 0 (negative), got {lab}")
    h, w = original_size
    outside = (pts[:, 0] < 0) | (pts[:, 0] > h - 1) | (pts[:, 1] < 0) | (pts[:, 1] > w - 1)
    if outside.any():
        raise ValueError(f"points {pts[outside].tolist()} (row, col) are outside the {h}x{w} slice")
    return pts, lab


def check_box(box: Any, original_size: tuple[int, int]) -> np.ndarray:
    """A ``(row_min, col_min, row_max, col_max)`` box, checked and clipped to the slice.

    Raises
    ------
    ValueError
        Not 4 numbers, NaN/infinite, empty or inverted, or outside the slice.
    """
    try:
        b = np.asarray(box, dtype=np.float64).ravel()
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"box must be 4 numbers (row_min, col_min, row_max, col_max), got {box!r}"
        ) from err
    if b.shape != (4,):
        raise ValueError(
            f"box must be (row_min, col_min, row_max, col_max), got shape {np.shape(box)}"
        )
    _finite(b, "box")
    if b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(
            f"box {b.tolist()} is empty or inverted: need row_min < row_max and "
            "col_min < col_max (order: row_min, col_min, row_max, col_max)"
        )
    h, w = original_size
    if b[2] < 0 or b[3] < 0 or b[0] > h - 1 or b[1] > w - 1:
        raise ValueError(f"box {b.tolist()} lies outside the {h}x{w} slice")
    return np.clip(b, 0, [h - 1, w - 1, h - 1, w - 1])


def _count(prompts: Any) -> int:
    try:
        return len(prompts)
    except TypeError as err:
        raise ValueError(
            f"prompts of predict_batch are one entry per object (a list or an array with a "
            f"leading batch axis), got {type(prompts).__name__}"
        ) from err


def _empty_points(points: Any) -> bool:
    """True when every object of a batch has zero points."""
    try:
        return all(np.asarray(p, dtype=np.float64).size == 0 for p in points)
    except (TypeError, ValueError):
        return False


def check_batch(points: Any, labels: Any, boxes: Any, masks: Any) -> tuple[Any, Any, int]:
    """``(points, labels, batch size)`` for ``predict_batch``: prompt kinds and sizes checked.

    Objects with zero points are allowed only with a box or a mask (the points
    are then dropped). Raises ``ValueError`` when there is no prompt, when the
    kinds give different batch sizes, or when only empty point arrays are given.
    """
    if labels is not None and points is None:
        raise ValueError("labels were given without points")
    if points is None and boxes is None and masks is None:
        raise ValueError("no prompt: give points, a box or a mask")
    sizes = {_count(x) for x in (points, boxes, masks) if x is not None}
    if len(sizes) != 1:
        raise ValueError(f"points, boxes and masks must have the same batch size: {sizes}")
    (bsz,) = sizes
    if points is not None and bsz and _empty_points(points):
        if boxes is None and masks is None:
            raise ValueError(
                "points is empty (0 points) and there is no box or mask: give at least one "
                "(row, col) point, a box or a mask"
            )
        points = labels = None  # a box or mask alone
    return points, labels, bsz
