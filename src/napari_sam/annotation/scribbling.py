"""Strokes as prompts of the annotator: paths and lines, painted scribbles, a refined label.

Qt- and napari-free (layers are duck-typed). The strokes of one slice come from

* the paths and lines of the boxes (Shapes) layer: an object stroke, or a
  background stroke when its edge colour is the negative colour (magenta;
  new shapes get it while new points are negative, Shift+T);
* the scribble Labels layer (``"<image> scribbles"``, made on demand):
  1 = object, 2 = background, each painted stroke one stroke
  (:func:`napari_sam.scribbles.strokes_from_labels`);
* a label being refined (:mod:`.refining`): its mask on the slice is a lasso
  (mask prompt plus its bounding box).

:class:`StrokeJoin` is the ``join`` of
:func:`~napari_sam.annotation.prompts.collect_slice_prompts`: the strokes of
the slice and the points outside the shapes become ONE object (each object
stroke its own object in batch mode, with the background strokes and
negative points), a :class:`ScribbleObject` that decodes itself with
:meth:`napari_sam.scribbles.ScribblePrompt.segment` (correction points taken
from the strokes). What the core says about the strokes (clipped at the
slice edge, outside the slice, on another slice, samples left on the wrong
side of the mask) reaches the user as messages and :attr:`ScribbleObject.note`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_sam.annotation.layers import STROKE_SHAPES
from napari_sam.annotation.prompts import prompts_on_slice
from napari_sam.annotation.slicing import apply_affine
from napari_sam.scribbles import (
    DEFAULT_MAX_POINTS,
    Stroke,
    clip_polyline,
    scribble_prompt,
    strokes_from_labels,
    strokes_from_shapes,
)

__all__ = [
    "NEGATIVE_RGB",
    "SCRIBBLE_ROLE",
    "STROKE_SHAPES",
    "ScribbleObject",
    "Scribbles",
    "StrokeJoin",
    "shape_strokes",
    "stroke_positive",
]

#: RGB of a background stroke's edge: napari's ``"magenta"``
#: (:data:`~napari_sam.annotation.layer_set.NEGATIVE_COLOR`).
NEGATIVE_RGB = (1.0, 0.0, 1.0)
#: ``metadata["napari_sam"]["role"]`` of the scribble Labels layer.
SCRIBBLE_ROLE = "scribble"

Index = tuple[int, ...]


def stroke_positive(shapes_layer: Any) -> np.ndarray:
    """``(N,)`` bool per shape: False where the edge colour is the negative colour."""
    colors = np.asarray(getattr(shapes_layer, "edge_color", np.zeros((0, 4))), dtype=float)
    if colors.ndim != 2 or len(colors) != len(shapes_layer.data):
        return np.ones(len(shapes_layer.data), dtype=bool)
    return ~np.all(np.abs(colors[:, :3] - np.asarray(NEGATIVE_RGB)) < 0.05, axis=1)


def shape_strokes(
    shapes: Sequence[Any],
    shape_types: Sequence[str],
    positive: Sequence[bool] | np.ndarray,
    to_image: np.ndarray,
    n_lead: int,
    slice_index: Index,
    slice_shape: tuple[int, int],
) -> tuple[list[Stroke], list[str]]:
    """The paths and lines of slice ``slice_index`` (by their first vertex) as strokes.

    ``shapes`` are the layer's vertex arrays, mapped to image pixels with
    ``to_image``. A stroke that leaves the slice (a vertex on another slice)
    or lies wholly outside the image is left out, with a message naming it.
    Returns ``(strokes, messages)``; strokes are named ``"path 3"``...
    """
    h, w = slice_shape
    strokes: list[Stroke] = []
    messages: list[str] = []
    for k, (verts, kind, sign) in enumerate(zip(shapes, shape_types, positive)):
        if kind not in STROKE_SHAPES:
            continue
        verts = np.asarray(verts, dtype=np.float64)
        if not len(verts) or not prompts_on_slice(verts[:1], to_image, n_lead, slice_index)[0]:
            continue
        image = apply_affine(to_image, verts)
        try:
            (stroke,) = strokes_from_shapes([image], [kind], [bool(sign)],
                                            slice_index=slice_index if n_lead else None)
        except ValueError as err:
            messages.append(f"{kind} {k} ignored: {str(err).replace('shape 0', kind)}")
            continue
        stroke = replace(stroke, name=f"{kind} {k}")
        if not clip_polyline(stroke.vertices, (h, w)):
            rows_cols = np.round(stroke.vertices[[0, -1]], 1).tolist()
            messages.append(
                f"{kind} {k} ignored: it lies outside the {h}x{w} image (from/to (row, col) "
                f"{rows_cols}); draw it on the image")
            continue
        strokes.append(stroke)
    return strokes, messages


@dataclass(eq=False)
class ScribbleObject:
    """One object prompted by strokes (and clicks), decoded with correction points.

    Duck-types :class:`~napari_sam.annotation.prompts.ObjectPrompt` for the
    preview: ``points``/``labels`` are the first prompt until
    :meth:`decode` runs, then the prompt that gave the mask (so the preview
    keeps every part it prompted); ``box``/``mask`` are the lasso's.

    Attributes
    ----------
    prompt : the :class:`~napari_sam.scribbles.ScribblePrompt`
    source : ``"scribble"`` or ``"refine"`` (a label being refined)
    note : what the user should know after decoding (stroke samples left on
        the wrong side of the mask), or ``""``
    label_id : the label being refined (``source == "refine"``), else None
    """

    prompt: Any
    source: str = "scribble"
    label_id: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        self.points = np.asarray(self.prompt.points, dtype=np.float64).reshape(-1, 2)
        self.labels = np.asarray(self.prompt.labels, dtype=np.int64).ravel()
        self.box = self.prompt.box
        self.mask = self.prompt.mask

    def decode(self, predictor: Any, embedding: Any) -> Any:
        """Segment (first prompt, then correction points from the strokes): a
        one-candidate :class:`~napari_sam.predictor.Prediction` of the kept mask."""
        from napari_sam.predictor import Prediction

        res = self.prompt.segment(predictor, embedding)
        self.points = np.asarray(res.points, dtype=np.float64).reshape(-1, 2)
        self.labels = np.asarray(res.labels, dtype=np.int64).ravel()
        self.note = self._describe(res)
        scores = np.asarray(res.prediction.scores, dtype=np.float32).ravel()
        k = int(np.argmax(scores)) if scores.size else 0
        logits = getattr(res.prediction, "logits", None)
        logits = None if logits is None else np.asarray(logits)[k : k + 1]
        return Prediction(np.asarray(res.mask, bool)[None], scores[k : k + 1], logits)

    def _describe(self, res: Any) -> str:
        if not res.violations:
            return ""
        depth = self.prompt.violations(res.mask)
        wrong = depth > 0
        sample_labels = np.asarray(self.prompt.sample_labels)
        outside = int(np.count_nonzero(wrong & (sample_labels == 1)))
        inside = int(np.count_nonzero(wrong & (sample_labels == 0)))
        parts = []
        if outside:
            parts.append(f"{outside} of the object strokes' samples lie outside the mask (a "
                         "stroke crosses into the background or another object)")
        if inside:
            parts.append(f"{inside} of the background strokes' samples lie inside it")
        return ("; ".join(parts) + f"; shown: the mask that honours most of the strokes "
                f"({len(res.points)} points)")


class StrokeJoin:
    """``join`` of :func:`~napari_sam.annotation.prompts.collect_slice_prompts` for one slice.

    Parameters
    ----------
    strokes : the slice's :class:`~napari_sam.scribbles.Stroke` s
    slice_shape : ``(H, W)``
    batch : each object stroke (and lasso) is its own object
    base : ``(label_id, mask)`` of a label being refined: one object, its mask
        a lasso, with every stroke and point of the slice
    notes : messages about the strokes (shown with the prompts' messages)
    """

    def __init__(
        self, strokes: Sequence[Stroke], slice_shape: tuple[int, int], *, batch: bool = False,
        base: tuple[int, np.ndarray] | None = None, notes: Sequence[str] = (),
    ) -> None:
        self.strokes = list(strokes)
        self.shape = (int(slice_shape[0]), int(slice_shape[1]))
        self.batch = batch
        self.base = base
        self.notes = list(notes)

    def _object(self, strokes: list[Stroke], rc: np.ndarray, lab: np.ndarray,
                messages: list[str], **kwargs: Any) -> ScribbleObject | None:
        pieces = sum(len(clip_polyline(s.vertices, self.shape)) for s in strokes
                     if not (s.closed and s.positive))
        try:
            prompt = scribble_prompt(strokes, self.shape, points=rc, point_labels=lab,
                                     max_points=max(DEFAULT_MAX_POINTS, len(rc) + pieces + 4))
        except ValueError as err:
            messages.append(f"strokes not used: {err}")
            return None
        messages.extend(prompt.messages)
        return ScribbleObject(prompt, **kwargs)

    def __call__(
        self, rc: np.ndarray, lab: np.ndarray, messages: list[str]
    ) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """``(objects, points left, their labels)`` from the points outside the shapes."""
        messages.extend(self.notes)
        rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
        lab = np.asarray(lab, dtype=np.int64).ravel()
        if self.base is not None:
            label_id, mask = self.base
            lasso = Stroke(np.argwhere(mask).mean(axis=0)[None], True, True,
                           np.asarray(mask, bool), f"label {label_id}")
            obj = self._object([lasso, *self.strokes], rc, lab, messages, source="refine",
                               label_id=int(label_id))
            return ([obj] if obj is not None else []), rc[:0], lab[:0]
        if not self.strokes:
            return [], rc, lab
        if not self.batch:
            obj = self._object(self.strokes, rc, lab, messages)
            return ([obj], rc[:0], lab[:0]) if obj is not None else ([], rc, lab)
        negative = [s for s in self.strokes if not s.positive]
        neg = lab == 0
        objects = []
        for stroke in (s for s in self.strokes if s.positive):
            obj = self._object([stroke, *negative], rc[neg], lab[neg], messages)
            if obj is not None:
                objects.append(obj)
        if not (lab == 1).any():
            return objects, rc[:0], lab[:0]  # the negative points went to the strokes
        return objects, rc, lab


class Scribbles:
    """The annotator's strokes: the ``extra`` of its
    :class:`~napari_sam.annotation.prompt_layers.PromptLayers`.

    Parameters
    ----------
    layers : the annotator's :class:`~napari_sam.annotation.layer_set.AnnotatorLayers`

    Attributes
    ----------
    layer : the scribble Labels layer (1 = object, 2 = background), or None
    refining : ``refining(slice_index) -> (label_id, mask) | None``: the label
        being refined on that slice (set by :class:`~.refining.Refiner`)
    on_remove : ``on_remove(slice_index)`` when the slice's prompts are removed
    """

    def __init__(self, layers: Any) -> None:
        self.layers = layers
        self.layer: Any = None
        self.refining: Callable[[Index], Any] = lambda idx: None
        self.on_remove: Callable[[Index], Any] = lambda idx: None
        self._positive_edge: Any = None

    # ----------------------------------------------------- PromptLayers.extra
    def painted(self, idx: Index) -> np.ndarray | None:
        """The scribble layer's ``(H, W)`` slice ``idx``, or None without one."""
        layer = self.layer
        if layer is None or layer not in self.layers.viewer.layers:
            return None
        return np.asarray(layer.data[tuple(idx)])

    def join(self, idx: Index, batch: bool) -> StrokeJoin | None:
        """The :class:`StrokeJoin` of slice ``idx``, or None when it has no stroke and no
        refined label (the prompts are then read as before)."""
        shapes = self.layers.shapes
        types = list(shapes.shape_type)
        painted = self.painted(idx)
        base = self.refining(idx)
        has_painted = painted is not None and bool(painted.any())
        if base is None and not has_painted and not any(t in STROKE_SHAPES for t in types):
            return None
        geometry = self.layers.geometry
        strokes, notes = shape_strokes(
            list(shapes.data), types, stroke_positive(shapes), self.layers.to_image(shapes),
            geometry.n_lead, tuple(idx), geometry.slice_shape)
        if painted is not None and has_painted:
            strokes += strokes_from_labels(painted)
        return StrokeJoin(strokes, geometry.slice_shape, batch=batch, base=base, notes=notes)

    def remove(self, idx: Index) -> None:
        """Clear the painted strokes of slice ``idx`` (with its other prompts); a label
        being refined there is let go (``on_remove``)."""
        self.on_remove(idx)
        painted = self.painted(idx)
        if painted is not None and painted.any():
            self.layer.data[tuple(idx)] = 0
            self.layer.refresh()

    def any_on(self, idx: Index) -> bool:
        """True when slice ``idx`` has painted strokes."""
        painted = self.painted(idx)
        return painted is not None and bool(painted.any())

    # --------------------------------------------------------------- toggles
    def edge_color(self, positive: bool) -> Any:
        """The edge colour of a new object (``positive``) or background stroke."""
        if not positive:
            return "magenta"
        if self._positive_edge is not None:
            return self._positive_edge
        current = self.layers.shapes.current_edge_color
        return "yellow" if current == "magenta" else current

    def follow_positive(self, positive: bool) -> None:
        """New strokes follow the points' positive/negative mode: the boxes layer's edge
        colour (magenta: background; also recolours the selected shapes) and the
        scribble layer's label (1 object, 2 background)."""
        shapes = self.layers.shapes
        if positive:
            if self._positive_edge is not None:
                shapes.current_edge_color = self._positive_edge
        else:
            if self._positive_edge is None:
                self._positive_edge = shapes.current_edge_color
            shapes.current_edge_color = "magenta"
        if self.layer is not None:
            self.layer.selected_label = 1 if positive else 2
