"""The prompt layers of one annotator: reading prompts per slice, adding, removing, files.

Qt- and napari-free: the Points and Shapes layers are used through their
public attributes (``data``, ``features``, ``shape_type``, ``add``...), and
coordinates go through the cached transforms of
:class:`~napari_sam.annotation.layer_set.AnnotatorLayers` (duck-typed:
``points``, ``shapes``, ``geometry``, ``to_image``, ``image_to_layer``,
``world_to_image``).

Prompts whose coordinates are not finite (NaN, infinite) or lie far outside
the image (more than :data:`REACH` image sizes, and at least
:data:`REACH_PIXELS` pixels, outside it along an axis, e.g. a point at z=1e9
from a script or a file) are refused where the annotator reads its
layers: :meth:`PromptLayers.refuse_bad` runs on the ``set_data`` event of the
points and boxes layers, which napari emits when new data is in place but
before its ``data`` event (where napari's own dims update would take the
point: its slider overflows and every later slice change fails; napari runs
its own callbacks of an event before any plugin's), and on their ``data``
events; it removes them (their ``data`` events blocked meanwhile: a
"removing" event would hand them to napari too) with one message naming the
value and the fix;
:meth:`add_point`,
:meth:`add_box` and :meth:`load` raise ``ValueError`` before adding anything.
Points just outside the slice stay, and are ignored with a message, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

from napari_sam.annotation.layer_set import NEGATIVE_COLOR
from napari_sam.annotation.layers import (
    STROKE_SHAPES,
    add_points,
    positive_feature,
    prompts_in_image_coords,
    remove_rows,
)
from napari_sam.annotation.prompts import SlicePrompts, collect_slice_prompts, prompts_on_slice
from napari_sam.annotation.slicing import apply_affine

__all__ = ["REACH", "REACH_PIXELS", "PromptLayers"]

Index = tuple[int, ...]

#: How far outside the image a prompt may lie, in image sizes along each axis ...
REACH = 10.0
#: ... and at least this many pixels (a click beside a small image stays a click).
REACH_PIXELS = 1000.0


def _number(value: float) -> str:
    return f"{value:g}"


class PromptLayers:
    """Point and shape prompts in image pixel coordinates ``(*leading, row, col)``.

    Parameters
    ----------
    layers : the annotator's :class:`~napari_sam.annotation.layer_set.AnnotatorLayers`
    say : ``say(text)``: a warning for the user (refused prompts), or None

    Attributes
    ----------
    extra : more prompts of a slice, or None: an object with ``join(idx, batch)``
        (the ``join`` of :func:`~napari_sam.annotation.prompts.collect_slice_prompts`,
        or None), ``remove(idx)`` and ``any_on(idx)``; the annotator's strokes
        (:class:`~napari_sam.annotation.scribbling.Scribbles`)
    """

    def __init__(self, layers: Any, say: Callable[[str], None] | None = None) -> None:
        self.layers = layers
        self.geometry = layers.geometry
        self.extra: Any = None
        self._say = say or (lambda text: None)
        self.refuse_bad()  # adopted layers may hold such prompts already

    # ------------------------------------------------------- bad coordinates
    def connections(self) -> list[tuple[Any, Callable[..., Any]]]:
        """``(emitter, slot)`` pairs the annotator connects and disconnects:
        :meth:`refuse_bad` on the ``set_data`` and ``data`` events of the points and
        boxes layers."""
        return [(layer.events.set_data if name == "set_data" else layer.events.data,
                 self.refuse_bad) for layer in (self.points, self.shapes)
                for name in ("set_data", "data")]

    def problems(self, coords: Any, to_image: np.ndarray | None = None) -> list[str | None]:
        """Per row of ``(N, D)`` coordinates (layer data; ``to_image``: the affine to
        image pixels, default identity), what makes it unusable as a prompt, or None."""
        coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
        if not coords.size:
            return []
        with np.errstate(all="ignore"):
            image = coords if to_image is None else apply_affine(
                np.asarray(to_image, dtype=np.float64), coords)
        d = image.shape[1]
        sizes = np.array([*self.geometry.lead_shape, *self.geometry.slice_shape], float)[-d:]
        names = [*self.layers.axis_names, "y", "x"][-d:]
        margin = np.maximum(REACH * sizes, REACH_PIXELS)
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(coords).all(1) & np.isfinite(image).all(1)
            far = (image < -margin - 0.5) | (image > sizes + margin - 0.5)
        out: list[str | None] = [None] * len(coords)
        for n in np.flatnonzero(~finite | far.any(1)):  # vectorized: only bad rows looped
            if not finite[n]:
                out[n] = "a coordinate is not finite (NaN or infinite)"
                continue
            i = int(np.flatnonzero(far[n])[0])
            out[n] = (f"{names[i]}={_number(image[n, i])} is far outside the image "
                      f"({names[i]} 0-{int(sizes[i]) - 1})")
        return out

    def check(self, what: str, coords: Any, to_image: np.ndarray | None = None) -> None:
        """Raise ``ValueError`` naming the first unusable row of ``coords`` (image pixels,
        or layer data with ``to_image``)."""
        rows = np.atleast_2d(np.asarray(coords, dtype=np.float64))
        for row, problem in zip(rows, self.problems(rows, to_image)):
            if problem:
                raise ValueError(f"{what} {_coords(row)} refused: {problem}; give pixel "
                                 f"coordinates on the image {self._extent()}")

    def _extent(self) -> str:
        sizes = [*self.geometry.lead_shape, *self.geometry.slice_shape]
        names = [*self.layers.axis_names, "y", "x"][-len(sizes):]
        return "(" + ", ".join(f"{n} 0-{s - 1}" for n, s in zip(names, sizes)) + ")"

    def refuse_bad(self, event: Any = None) -> int:
        """Remove points and shapes whose coordinates are not finite or far outside the
        image from their layers, with one message; returns how many were removed."""
        if str(getattr(event, "action", "added")).endswith("ing"):
            return 0  # "adding", "changing"...: the new data is not there yet
        removed = 0
        for layer, kind in ((self.points, "point"), (self.shapes, "shape")):
            if layer is None:
                continue
            to_image = self.layers.to_image(layer)
            if kind == "point":
                rows = list(zip(np.asarray(layer.data, dtype=np.float64), self.problems(
                    layer.data, to_image)))
            else:  # a shape is refused when any vertex is (all vertices checked at once)
                shapes = [np.asarray(v, dtype=np.float64) for v in layer.data]
                owner = np.repeat(np.arange(len(shapes)), [len(v) for v in shapes])
                found = self.problems(np.concatenate(shapes), to_image) if shapes else []
                first: dict[int, str] = {}
                for k, problem in zip(owner.tolist(), found):
                    if problem and k not in first:
                        first[k] = problem
                rows = [(v[0], first.get(k)) for k, v in enumerate(shapes)]
            bad = [i for i, (_, problem) in enumerate(rows) if problem]
            if not bad:
                continue
            blocker = getattr(layer.events.data, "blocker", None)
            with blocker() if callable(blocker) else nullcontext():
                remove_rows(layer, bad)  # unheard: a "removing" event would show them to napari
            removed += len(bad)
            first, problem = rows[bad[0]]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            self._say(f"{kind} at {_coords(first)}{more} removed from {layer.name!r}: "
                      f"{problem}. Prompts must lie on the image {self._extent()}; add it "
                      "again there")
        return removed

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
            self.check("point", pos)
            pos = self.layers.image_to_layer(self.points, pos)
        self.check("point", pos, self.layers.to_image(self.points))
        add_points(self.points, pos[None], [bool(positive)])

    def add_box(self, slice_index: Sequence[int], box: Sequence[float], shape_type: str) -> None:
        """Add a ``(row_min, col_min, row_max, col_max)`` rectangle (or ellipse) on a slice."""
        idx = self.geometry.check_slice_index(slice_index)
        r0, c0, r1, c1 = (float(v) for v in box)
        corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]])
        verts = np.column_stack([np.tile(np.asarray(idx, float), (4, 1)), corners])
        self.check("box corner", verts)
        self.shapes.add(self.layers.image_to_layer(self.shapes, verts), shape_type=shape_type)

    # --------------------------------------------------------------- files
    def save(self, path: Any, image_name: str) -> Any:
        """Save every prompt to a JSON file in image pixels; returns the ``PromptSet``."""
        from napari_sam.annotation.scribbling import stroke_positive
        from napari_sam.io import save_prompts

        points, positive, shapes, types, negative = prompts_in_image_coords(
            self.points, self.shapes,
            self.layers.to_image(self.points), self.layers.to_image(self.shapes),
            stroke_positive(self.shapes),
        )
        return save_prompts(path, points, positive, shapes, types, self.geometry.ndim,
                            coordinates="data", metadata={"image": image_name},
                            shape_negative=negative)

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

        with np.errstate(all="ignore"):
            for what, coords in (("point", prompts.points), *(
                    ("shape vertex", v) for v in prompts.shapes)):
                if len(coords):  # nothing added when one is unusable
                    self.check(f"{path}: {what}", apply_affine(w2d, coords)
                               if prompts.coordinates == "world" else coords)
        if len(prompts.points):
            add_points(self.points, to_layer(self.points, prompts.points),
                       prompts.point_positive)
        for verts, kind, negative in zip(prompts.shapes, prompts.shape_types,
                                         prompts.shape_negative):
            # strokes: their polarity is their edge colour (magenta: background)
            color = {} if kind not in STROKE_SHAPES else {
                "edge_color": NEGATIVE_COLOR if negative else "yellow"}
            self.shapes.add(to_layer(self.shapes, verts), shape_type=kind, **color)
        return prompts


def _coords(row: Any) -> str:
    return "(" + ", ".join(_number(float(v)) for v in np.ravel(row)) + ")"
