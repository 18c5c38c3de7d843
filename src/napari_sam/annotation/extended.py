"""The annotator's methods beyond clicks and boxes: scribbles, refining a label, "find
all like this", tracking through time and the review of a propagation.

:class:`BeyondClicks` is a base class of :class:`napari_sam.Annotator` (kept
here so that ``annotator.py`` stays a short facade); its parts live in
:mod:`.scribbling`, :mod:`.refining`, :mod:`.similar_jobs`, :mod:`.tracking`
and :mod:`.review`, and are made when the annotator connects its events
(:meth:`BeyondClicks._extended_connections`). Qt- and napari-free apart from
the scribble layer (:mod:`.extra_layers`, imported when it is needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.annotation.refining import Refiner
from napari_sam.annotation.review import PropagationReview
from napari_sam.annotation.scribbling import Scribbles
from napari_sam.annotation.similar_jobs import SimilarObjects
from napari_sam.annotation.tracking import Tracker

if TYPE_CHECKING:
    from napari_sam.annotation.embedder import SliceEmbedder
    from napari_sam.annotation.jobs import JobRunner
    from napari_sam.annotation.layer_set import AnnotatorLayers
    from napari_sam.annotation.prompt_layers import PromptLayers
    from napari_sam.annotation.segmenting import Segmenter
    from napari_sam.annotation.slicing import ImageGeometry
    from napari_sam.annotation.stack import StackActions
    from napari_sam.annotation.state import AnnotatorState, Level
    from napari_sam.labels.writers import LayerWriter

__all__ = ["BeyondClicks"]


class BeyondClicks:
    """Scribbles, refine, find all like this, tracking and review (see the module doc).

    Uses the annotator's ``state``, ``runner``, ``embedder``, ``layers``,
    ``prompt_layers``, ``segmenter``, ``stack``, ``writer``, ``events`` and
    ``viewer``.
    """

    if TYPE_CHECKING:  # the host's (napari_sam.Annotator's) parts and helpers
        viewer: Any
        events: Any
        state: AnnotatorState
        runner: JobRunner
        embedder: SliceEmbedder
        layers: AnnotatorLayers
        geometry: ImageGeometry
        prompt_layers: PromptLayers
        segmenter: Segmenter
        stack: StackActions
        writer: LayerWriter
        points_layer: Any
        shapes_layer: Any
        positive: bool
        _closed: bool

        def _say(self, level: Level, text: str) -> None: ...
        def _limits(self) -> Any: ...
        def _resolve_slice(self, slice_index: Any) -> tuple[int, ...] | None: ...
        def _on_prompts_changed(self, event: Any = None) -> None: ...

    # ------------------------------------------------------------------ parts
    @cached_property
    def scribbles(self) -> Scribbles:
        """The strokes of the prompts (:class:`~.scribbling.Scribbles`)."""
        from napari_sam.annotation.extra_layers import find_scribble_layer

        part = Scribbles(self.layers)
        part.layer = self.layers.scribbles = find_scribble_layer(self.layers)  # a helper layer
        self.prompt_layers.extra = part
        return part

    @cached_property
    def refiner(self) -> Refiner:
        """Refining existing labels (:class:`~.refining.Refiner`)."""
        return Refiner(self.state, self.runner, self.layers, self.segmenter, self.prompt_layers,
                       self.writer, self.events, self.scribbles, self.viewer)

    @cached_property
    def similar(self) -> SimilarObjects:
        """"Find all like this" (:class:`~.similar_jobs.SimilarObjects`)."""
        return SimilarObjects(self.state, self.runner, self.embedder, self.layers, self.stack)

    @cached_property
    def tracker(self) -> Tracker:
        """Propagation along time or another axis (:class:`~.tracking.Tracker`)."""
        return Tracker(self.state, self.runner, self.embedder, self.layers, self.writer,
                       self.events)

    @cached_property
    def reviewer(self) -> PropagationReview:
        """The doubtful slices of a propagation (:class:`~.review.PropagationReview`)."""
        return PropagationReview(self.state, self.layers, self.viewer, self._say)

    def _extended_connections(self) -> list[tuple[Any, Any]]:
        """The events these parts follow (connected and disconnected with the annotator's)."""
        scribbles, _ = self.scribbles, self.refiner  # made now: prompts read them from the start
        out = [
            (self.points_layer.events.feature_defaults, self._follow_positive),
            (self.events.segmented, self._after_segmented),
            (self.events.propagation_step, self.reviewer.step),
            (self.events.propagated, self.reviewer.finished),
            (self.state.events.everything, self.similar.everything_changed),
        ]
        if scribbles.layer is not None:
            out.append((scribbles.layer.events.paint, self._on_scribble_painted))
        return out

    def _on_scribble_painted(self, event: Any = None) -> None:
        """A stroke on the scribble layer: its prompts changed (auto-segment). napari's
        ``Labels.paint()`` outside a mouse stroke announces the edit before writing it:
        then the prompts are read when the layer reports the write."""
        layer = self.scribbles.layer
        if layer is not None and not _written(layer, getattr(event, "value", None)):
            layer.events.labels_update.connect(self._after_scribble_write)
            return
        self._on_prompts_changed()

    def _after_scribble_write(self, event: Any = None) -> None:
        layer = self.scribbles.layer
        if layer is not None:
            layer.events.labels_update.disconnect(self._after_scribble_write)
        self._on_prompts_changed()

    def _follow_positive(self, event: Any = None) -> None:
        self.scribbles.follow_positive(self.positive)

    def _after_segmented(self, event: Any = None) -> None:
        preview = self.state.preview
        notes = [p.note for p in getattr(preview, "prompts", ()) if getattr(p, "note", "")]
        session = self.refiner.session
        if session is not None and self.refiner.owns(preview):
            notes.insert(0, f"refining label {session.label_id}: Commit replaces "
                         "it on this slice only (other labels untouched), Clear stops")
        if notes:  # e.g. a stroke crossing into the background: said in the status line
            self._say("status", f"{self.state.message.text}. {'; '.join(notes)}")

    # --------------------------------------------------------------- scribbles
    @property
    def scribble_layer(self) -> Any:
        """The scribble Labels layer (1 = object, 2 = background), or None before
        :meth:`add_scribble_layer`."""
        return self.scribbles.layer

    def add_scribble_layer(self) -> Any:
        """The scribble Labels layer: found or created, made active in paint mode.

        Strokes painted there (1 = object, 2 = background; the label follows
        positive/negative) are prompts of their slice, joined with its points
        and with the paths/lines of :attr:`shapes_layer`.
        """
        from napari_sam.annotation.extra_layers import scribble_layer

        layer = scribble_layer(self.layers)
        if layer is not self.scribbles.layer:
            if self.scribbles.layer is not None:
                self.scribbles.layer.events.paint.disconnect(self._on_scribble_painted)
            self.scribbles.layer = self.layers.scribbles = layer
            layer.events.paint.connect(self._on_scribble_painted)
        layer.selected_label = 1 if self.positive else 2
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self._say("status", f"paint strokes in {layer.name!r}: label 1 on the object, 2 on "
                  "the background (follows positive/negative); they prompt like points")
        return layer

    def add_stroke(self, slice_index: Sequence[int], vertices: Any, positive: bool = True,
                   shape_type: str = "path") -> None:
        """Add a stroke: a ``path`` (or ``line``) through ``(row, col)`` image pixels of a
        slice, on :attr:`shapes_layer`; ``positive=False`` is a background stroke
        (magenta edge)."""
        from napari_sam.annotation.scribbling import STROKE_SHAPES

        if shape_type not in STROKE_SHAPES:
            raise ValueError(f"shape_type must be one of {STROKE_SHAPES}, got {shape_type!r}")
        idx = self.geometry.check_slice_index(slice_index)
        rc = np.asarray(vertices, dtype=np.float64)
        if rc.ndim != 2 or rc.shape[1] != 2 or len(rc) < (2 if shape_type == "line" else 1):
            raise ValueError(f"vertices must be (M, 2) (row, col) image pixels, got shape "
                             f"{rc.shape}")
        full = np.column_stack([np.tile(np.asarray(idx, float), (len(rc), 1)), rc])
        color = self.scribbles.edge_color(bool(positive))
        self.shapes_layer.add(self.layers.image_to_layer(self.shapes_layer, full),
                              shape_type=shape_type, edge_color=color)

    # ----------------------------------------------------------------- refine
    def refine(self, label_id: int | None = None, slice: Sequence[int] | None = None, *,
               at_cursor: bool = False, blocking: bool = True) -> list[np.ndarray] | None:
        """Correct an existing label on a slice (default: the one on screen) with SAM.

        ``label_id``: default the labels layer's ``selected_label`` (``at_cursor``:
        the label under the cursor first). Its mask there becomes the prompt
        (mask plus its box), joined by the slice's points and strokes; the
        preview shows the result (returned, like :meth:`segment`). :meth:`commit`
        then replaces that label's pixels on this slice only (one undo step;
        other labels never change); :meth:`clear` stops. A label that is not
        on the slice: a message and ``[]``.
        """
        idx = self._resolve_slice(slice)
        if idx is None or self._closed:
            return []
        return self.refiner.start(idx, label_id, at_cursor=at_cursor, blocking=blocking)

    # -------------------------------------------------------------- similar
    def find_similar(self, label_ids: int | Sequence[int] | None = None, stack: bool = False, *,
                     threshold: float | None = None, slice: Sequence[int] | None = None,
                     blocking: bool = True, **params: Any) -> Any:
        """"Find all like this": objects like the committed ``label_ids`` (exemplars).

        Runs :func:`napari_sam.find_similar` on the slice (``stack=True``: the
        stack holding it) as a job (progress, :meth:`cancel`); the candidates
        scoring >= ``threshold`` (default :attr:`similar_threshold`) go to the
        review layer :attr:`everything_layer`; :meth:`commit_everything`
        commits them (new ids, existing labels kept, one undo step).
        ``label_ids`` default: the last commit on this slice, else the selected
        label. ``params`` go to everything mode. Blocking: the
        :class:`~napari_sam.similar.SimilarResult`; else None. Exemplars that
        are not there: a message and None.
        """
        idx = self._resolve_slice(slice)
        if idx is None or self._closed:
            return None
        return self.similar.find(idx, self._limits(), label_ids, stack=stack, threshold=threshold,
                                 params=params, blocking=blocking)

    @property
    def similar_threshold(self) -> float:
        """Score of the "find all like this" candidates shown; setting it re-ranks the
        result under review (nothing recomputed)."""
        return self.similar.threshold

    @similar_threshold.setter
    def similar_threshold(self, value: float) -> None:
        self.similar.set_threshold(value)

    # ------------------------------------------------------------ tracking
    @property
    def propagation_axis(self) -> Any:
        """The default ``axis`` of :meth:`propagate`: None (z; t for a ``(T, Y, X)``
        image whose axis labels say so), ``"t"``, ``"z"``, an axis name or index."""
        return self.tracker.axis

    @propagation_axis.setter
    def propagation_axis(self, axis: Any) -> None:
        if axis is not None:
            self.tracker.resolve(axis)  # ValueError for an axis that cannot be propagated
        self.tracker.axis = axis

    def _track(self, label_id: Any, direction: str, z_range: Any, options: dict,
               blocking: bool) -> Any:
        idx = self._resolve_slice(None)
        if idx is None:
            return None
        return self.tracker.propagate(idx, self._limits(), label_id, direction, z_range,
                                      options, blocking=blocking)

    # -------------------------------------------------------------- review
    @property
    def review(self) -> Any:
        """The doubtful slices of the last propagation
        (:class:`~.review.ReviewList`, ``state.review``), or None."""
        return self.state.review

    def next_doubtful(self) -> Any:
        """Move the viewer to the next doubtful slice of the last propagation (after the
        one on screen, wrapping) and select its label; returns the
        :class:`~.review.Doubt`, or None (with a message) when there is none."""
        return self.reviewer.next()


def _written(layer: Any, item: Any) -> bool:
    """Whether a paint event's history item is in ``layer.data`` already (True when
    it cannot tell): the atoms are ``(indices, old values, new value)`` or napari's
    masked atoms (``slice_key``, ``mask``, ``new_value``)."""
    try:
        atom = item[-1]
        if hasattr(atom, "slice_key"):
            region = np.asarray(layer.data[atom.slice_key])
            values = region if atom.mask is None else region[atom.mask]
            return bool(np.all(values == atom.new_value))
        indices, _, value = atom
        return bool(np.all(np.asarray(layer.data[indices]) == value))
    except (TypeError, IndexError, ValueError, AttributeError):
        return True
