"""Propagation of object masks through the slices of a stack (Qt- and torch-free).

The public entry points are :func:`propagate` (also ``napari_sam.propagate``) and
:func:`propagate_iter`; their options are the fields of :class:`PropagationParams`
(declared once, :mod:`napari_sam.options`); see
``docs/propagation.md`` for the algorithm, stop rules and benchmark.
"""

from __future__ import annotations

from napari_sam.normalize import stack_contrast_limits
from napari_sam.propagation.api import propagate, propagate_iter
from napari_sam.propagation.inputs import DIRECTIONS, SINGLE_OBJECT_ID
from napari_sam.propagation.params import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_MAX_GROWTH,
    DEFAULT_MIN_AREA,
    DEFAULT_PROMPT_MODE,
    DEFAULT_SCORE_THRESHOLD,
    PropagationParams,
)
from napari_sam.propagation.prompts import BENCHMARK_MODES, PROMPT_PARTS, parse_prompt_mode
from napari_sam.propagation.records import (
    ACCEPTED,
    STATUSES,
    ObjectSummary,
    PropagationResult,
    SliceRecord,
    SliceUpdate,
    summarize,
)

__all__ = [
    "ACCEPTED",
    "BENCHMARK_MODES",
    "DEFAULT_IOU_THRESHOLD",
    "DEFAULT_MAX_GROWTH",
    "DEFAULT_MIN_AREA",
    "DEFAULT_PROMPT_MODE",
    "DEFAULT_SCORE_THRESHOLD",
    "DIRECTIONS",
    "PROMPT_PARTS",
    "SINGLE_OBJECT_ID",
    "STATUSES",
    "ObjectSummary",
    "PropagationParams",
    "PropagationResult",
    "SliceRecord",
    "SliceUpdate",
    "parse_prompt_mode",
    "propagate",
    "propagate_iter",
    "stack_contrast_limits",
    "summarize",
]
