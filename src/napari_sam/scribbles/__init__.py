"""Scribbles and lassos: strokes on a slice become the prompt of one object.

Pure numpy/scipy/scikit-image (no torch, Qt or napari). A *stroke* is a
polyline of ``(row, col)`` pixels of one slice: a napari Shapes ``path`` or
``line`` (:func:`strokes_from_shapes`), or a stroke painted into a "scribble"
label image with 1 = object and 2 = background (:func:`strokes_from_labels`).
:func:`scribble_prompt` turns the strokes of one object into a
:class:`ScribblePrompt`, and :meth:`ScribblePrompt.segment` segments it::

    prompt = scribble_prompt(strokes, slice_shape)
    result = prompt.segment(predictor, embedding)     # ScribbleResult
    result.mask, result.points, result.labels, result.violations

The rules
---------
* **Open strokes** (paths, lines, painted scribbles) are *constraints*: every
  pixel of an object stroke should end up inside the mask, every pixel of a
  background stroke outside. They are sampled every :data:`MIN_SPACING`
  pixels (:func:`sample_polyline`, endpoints included). The prompt starts
  with the clicks and one point in the middle (by arc length) of each stroke,
  positive on object strokes, negative on background strokes; then, as in
  SAM's interactive training, the sample deepest inside the error (farthest
  from the mask's edge on the wrong side, beyond ``tolerance`` pixels) is
  added as the next point, with the previous mask as the mask prompt, until
  the mask honours every sample or the object has ``max_points`` points
  (:data:`DEFAULT_MAX_POINTS`). The mask of the step with the fewest broken
  samples is kept (the earliest on ties). Why not points spread along the
  whole stroke: every positive point widens a SAM mask, and the bundled
  ``micro`` model (trained with one click plus correction clicks) then
  overshoots the object (measured in docs/api.md, "Scribbles and lassos").
* **Closed strokes** on the object (a ``polygon`` shape, a path whose ends
  meet: gap at most :data:`CLOSE_FRACTION` of its length around a
  non-degenerate area, or a painted loop) are *lassos*: their filled area
  becomes the mask prompt and its bounding box the box prompt (the annotator
  prompts polygons the same way; SAM's mask-only prompts are weak). A
  lasso's outline lies around the object, so it gives no points. Closed
  background strokes are used like open ones.
* **Clipping.** Strokes are clipped to the slice ``[0, H - 1] x [0, W - 1]``
  (a stroke that leaves and re-enters the slice gives several pieces; a
  lasso's area is cut at the slice edge), with a note in
  :attr:`ScribblePrompt.messages`. A stroke with nothing inside the slice is
  a ``ValueError`` naming the stroke and the slice shape.
* A stroke that runs past its object into the background is not an error:
  the mask may then include that background, or keep the object and leave
  the samples outside it, which :attr:`ScribbleResult.violations` counts
  (the annotator can say so).

Coordinates are ``(row, col)`` throughout; SAM's ``(x, y)`` appears only in
:meth:`napari_sam.predictor.Embedding.to_model_frame`.
"""

from __future__ import annotations

from napari_sam.scribbles._geometry import CLOSE_FRACTION, clip_polyline, sample_polyline
from napari_sam.scribbles._prompt import (
    DEFAULT_MAX_POINTS,
    DEFAULT_TOLERANCE,
    MIN_SPACING,
    ScribblePrompt,
    ScribbleResult,
    scribble_prompt,
)
from napari_sam.scribbles._strokes import (
    BACKGROUND_VALUE,
    OBJECT_VALUE,
    STROKE_TYPES,
    Stroke,
    strokes_from_labels,
    strokes_from_shapes,
)

__all__ = [
    "BACKGROUND_VALUE",
    "CLOSE_FRACTION",
    "DEFAULT_MAX_POINTS",
    "DEFAULT_TOLERANCE",
    "MIN_SPACING",
    "OBJECT_VALUE",
    "STROKE_TYPES",
    "ScribblePrompt",
    "ScribbleResult",
    "Stroke",
    "clip_polyline",
    "sample_polyline",
    "scribble_prompt",
    "strokes_from_labels",
    "strokes_from_shapes",
]
