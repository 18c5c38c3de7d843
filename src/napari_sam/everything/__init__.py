"""Automatic instance segmentation ("segment everything") of a slice and of a stack.

* :func:`segment_everything`: one 2D slice -> ``(H, W)`` uint32 labels and records.
* :func:`segment_everything_stack`: every slice of a ``(Z, Y, X)`` stack in 2D, then
  objects linked across neighbouring slices -> ``(Z, Y, X)`` uint32 labels.

Their options are the fields of :class:`EverythingParams` and
:class:`EverythingStackParams`, declared once (:mod:`napari_sam.options`).
Both raise :class:`Cancelled` when their ``cancel`` event/callable is set. See
``docs/everything.md`` for the algorithm, its parameters and benchmarks.
Compute-only: no Qt or napari imports.
"""

from __future__ import annotations

from napari_sam.everything._core import segment_everything
from napari_sam.everything._params import (
    Cancelled,
    EverythingParams,
    EverythingResult,
    EverythingStackParams,
    ObjectRecord,
)
from napari_sam.everything._stack import (
    EverythingStackResult,
    StackObjectRecord,
    segment_everything_stack,
)

__all__ = [
    "Cancelled",
    "EverythingParams",
    "EverythingResult",
    "EverythingStackParams",
    "EverythingStackResult",
    "ObjectRecord",
    "StackObjectRecord",
    "segment_everything",
    "segment_everything_stack",
]
