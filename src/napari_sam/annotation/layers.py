"""Prompt layer data <-> image pixel coordinates, duck-typed on napari's Points/Shapes.

Qt- and napari-free: these functions use only the public attributes of the
layers (``data``, ``features``, ``shape_type``, ``selected_data``,
``remove_selected``, ``add``) and affine matrices from
:func:`napari_sam.annotation.slicing.layer_affine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.annotation.slicing import apply_affine
from napari_sam.prompt_files import SHAPE_TYPES, STROKE_SHAPES

__all__ = [
    "PROMPT_SHAPE_TYPES",
    "STROKE_SHAPES",
    "add_points",
    "positive_feature",
    "prompts_in_image_coords",
    "remove_rows",
]

#: Shape types that are prompts: boxes, polygons and the strokes (``STROKE_SHAPES``,
#: the boxes layer's paths and lines; polygons stay mask prompts), as prompt files hold them.
PROMPT_SHAPE_TYPES = SHAPE_TYPES


def positive_feature(points_layer: Any) -> np.ndarray:
    """``(N,)`` bool: the ``positive`` feature of a Points layer (all True if absent)."""
    features = points_layer.features
    if "positive" in features:
        return np.asarray(features["positive"], dtype=bool)
    return np.ones(len(points_layer.data), dtype=bool)


def remove_rows(layer: Any, rows: Sequence[int] | np.ndarray) -> None:
    """Remove points/shapes ``rows`` through the layer's selection (features stay aligned)."""
    if len(rows):
        layer.selected_data = {int(r) for r in rows}
        layer.remove_selected()


def prompts_in_image_coords(
    points_layer: Any,
    shapes_layer: Any,
    points_to_image: np.ndarray,
    shapes_to_image: np.ndarray,
    shape_positive: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[str], list[bool]]:
    """All prompts in image pixel coordinates.

    ``shape_positive``: ``(M,)`` bool per shape of the layer, False for a
    background stroke (default: all positive).

    Returns
    -------
    points : ``(N, D)``; positive : ``(N,)`` bool; shapes : vertices ``(M_i, D)``
    of rectangles, polygons, ellipses, paths and lines; shape_types : their
    types; negative : per kept shape, True for a background stroke
    """
    data = np.asarray(points_layer.data, dtype=np.float64)
    points = apply_affine(points_to_image, data) if len(data) else data
    keep = [i for i, t in enumerate(shapes_layer.shape_type) if t in PROMPT_SHAPE_TYPES]
    shapes = [apply_affine(shapes_to_image, shapes_layer.data[i]) for i in keep]
    types = [shapes_layer.shape_type[i] for i in keep]
    negative = [
        t in STROKE_SHAPES and shape_positive is not None and not bool(shape_positive[i])
        for i, t in zip(keep, types)
    ]
    return points, positive_feature(points_layer), shapes, types, negative


def add_points(points_layer: Any, coords: np.ndarray,
               positive: np.ndarray | Sequence[bool]) -> None:
    """Append points (layer data coordinates) with their ``positive`` values."""
    if not len(coords):
        return
    old = positive_feature(points_layer)
    points_layer.add(np.asarray(coords, dtype=np.float64))
    points_layer.features = {"positive": np.concatenate([old, np.asarray(positive, bool)])}
    points_layer.refresh_colors()
