"""The prompt layers of one annotator: reading prompts per slice, adding, removing, files.

Qt- and napari-free: the Points and Shapes layers are used through their
public attributes (``data``, ``features``, ``shape_type``, ``add``...), and
coordinates go through the cached transforms of
:class:`~napari_sam.annotation.layer_set.AnnotatorLayers` (duck-typed:
``points``, ``shapes``, ``geometry``, ``to_image``, ``image_to_layer``,
``world_to_image``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.annotation.layers import (
    add_points,
    positive_feature,
    prompts_in_image_coords,
    remove_rows,
)
from napari_sam.annotation.prompts import SlicePrompts, collect_slice_prompts, prompts_on_slice
from napari_sam.annotation.slicing import apply_affine

__all__ = ["PromptLayers"]

Index = tuple[int, ...]


class PromptLayers:
    """Point and shape prompts in image pixel coordinates ``(*leading, row, col)``.

    Parameters
    ----------
    layers : the annotator's :class:`~napari_sam.annotation.layer_set.AnnotatorLayers`

    Attributes
    ----------
    extra : more prompts of a slice, or None: an object with ``join(idx, batch)``
        (the ``join`` of :func:`~napari_sam.annotation.prompts.collect_slice_prompts`,
        or None), ``remove(idx)`` and ``any_on(idx)``; the annotator's strokes
        (:class:`~napari_sam.annotation.scribbling.Scribbles`)
    """

    def __init__(self, layers: Any) -> None:
        self.layers = layers
        self.geometry = layers.geometry
        self.extra: Any = None

    @property
    def points(self) -> Any:
        """The Points layer."""
        return self.layers.points

    @property
    def shapes(self) -> Any:
        """The Shapes layer."""
        return self.layers.shapes

    # ------------------------------------------------------------- reading
    def collect(self, idx: Index, batch: bool = False) -> SlicePrompts:
        """The objects the prompts of slice ``idx`` describe (see
        :func:`~napari_sam.annotation.prompts.collect_slice_prompts`)."""
        pts, shp = self.points, self.shapes
        return collect_slice_prompts(
            idx, self.geometry.slice_shape, n_lead=self.geometry.n_lead,
            points=pts.data, positive=positive_feature(pts),
            points_to_image=self.layers.to_image(pts), shapes=list(shp.data),
            shape_types=list(shp.shape_type), shapes_to_image=self.layers.to_image(shp),
            batch=batch, join=None if self.extra is None else self.extra.join(idx, batch),
        )

    def rows(self, idx: Index) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the points and of the shapes on slice ``idx`` (a shape by its first
        vertex), without building objects."""
        n_lead = self.geometry.n_lead
        pts, shp = self.points, self.shapes
        first = np.array([np.asarray(v)[0] for v in shp.data]).reshape(-1, self.geometry.ndim)
        return (
            np.flatnonzero(prompts_on_slice(pts.data, self.layers.to_image(pts), n_lead, idx)),
            np.flatnonzero(prompts_on_slice(first, self.layers.to_image(shp), n_lead, idx)),
        )

    def any_on(self, idx: Index) -> bool:
        """True when slice ``idx`` has a point, a shape or (``extra``) a painted stroke."""
        return any(len(rows) for rows in self.rows(idx)) or bool(
            self.extra is not None and self.extra.any_on(idx))

    # ------------------------------------------------------------- editing
    def remove(self, idx: Index) -> None:
        """Remove every point and shape (and ``extra`` stroke) of slice ``idx``."""
        point_rows, shape_rows = self.rows(idx)
        remove_rows(self.points, point_rows)
        remove_rows(self.shapes, shape_rows)
        if self.extra is not None:
            self.extra.remove(idx)

    def add_point(self, position: Sequence[float], positive: bool, world: bool) -> None:
        """Add a point at image pixel (or ``world``) coordinates, one per image axis."""
        pos = np.asarray(position, dtype=np.float64)
        if pos.shape != (self.geometry.ndim,):
            raise ValueError(f"position must have {self.geometry.ndim} coordinates "
                             f"(one per image axis), got shape {pos.shape}")
        if world:
            pos = np.asarray(self.points.world_to_data(pos), dtype=np.float64)
        else:
            pos = self.layers.image_to_layer(self.points, pos)
        add_points(self.points, pos[None], [bool(positive)])

    def add_box(self, slice_index: Sequence[int], box: Sequence[float], shape_type: str) -> None:
        """Add a ``(row_min, col_min, row_max, col_max)`` rectangle (or ellipse) on a slice."""
        idx = self.geometry.check_slice_index(slice_index)
        r0, c0, r1, c1 = (float(v) for v in box)
        corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]])
        verts = np.column_stack([np.tile(np.asarray(idx, float), (4, 1)), corners])
        self.shapes.add(self.layers.image_to_layer(self.shapes, verts), shape_type=shape_type)

    # --------------------------------------------------------------- files
    def save(self, path: Any, image_name: str) -> Any:
        """Save every prompt to a JSON file in image pixels; returns the ``PromptSet``."""
        from napari_sam.io import save_prompts

        points, positive, shapes, types = prompts_in_image_coords(
            self.points, self.shapes,
            self.layers.to_image(self.points), self.layers.to_image(self.shapes),
        )
        return save_prompts(path, points, positive, shapes, types, self.geometry.ndim,
                            coordinates="data", metadata={"image": image_name})

    def load(self, path: Any, image_name: str) -> Any:
        """Add the prompts of a JSON file (pixel or world coordinates); returns them.

        Raises
        ------
        ValueError
            The file's coordinates have another number of axes than the image.
        """
        from napari_sam.io import load_prompts

        prompts = load_prompts(path)
        if prompts.ndim != self.geometry.ndim:
            raise ValueError(f"prompt file has {prompts.ndim}-D coordinates but image "
                             f"{image_name!r} has {self.geometry.ndim} axes")
        w2d = self.layers.world_to_image()

        def to_layer(layer: Any, coords: np.ndarray) -> np.ndarray:
            image = apply_affine(w2d, coords) if prompts.coordinates == "world" else coords
            return self.layers.image_to_layer(layer, image)

        if len(prompts.points):
            add_points(self.points, to_layer(self.points, prompts.points),
                       prompts.point_positive)
        for verts, kind in zip(prompts.shapes, prompts.shape_types):
            self.shapes.add(to_layer(self.shapes, verts), shape_type=kind)
        return prompts
