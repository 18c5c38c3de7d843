"""Correcting an existing label with SAM: "refine" one label on one slice.

Qt- and napari-free (layers and viewer duck-typed). :meth:`Refiner.start`
takes a label of the labels layer (any source: committed, painted,
imported): the given id, the label under the cursor (the key) or the labels
layer's ``selected_label`` (the button). Its mask on the slice becomes a
lasso (mask prompt plus its bounding box) that the slice's points and
strokes join (:class:`~napari_sam.annotation.scribbling.StrokeJoin`), so new
positive/negative clicks refine it; the preview shows the result. Commit
replaces that label's pixels on that slice only
(:meth:`~napari_sam.labels.LabelsWriter.replace_object`: its pixels outside
the new mask are cleared, the mask takes background; other labels and
slices never change), as one undo step. Clear (or committing) ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.annotation.state import Commit

__all__ = ["RefineSession", "Refiner"]

Index = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class RefineSession:
    """The label being refined.

    Attributes
    ----------
    slice_index : its slice
    label_id : the label
    mask : ``(Y, X)`` bool: its pixels on the slice when refining started
    """

    slice_index: Index
    label_id: int
    mask: np.ndarray


class Refiner:
    """Refine existing labels of one annotator.

    Parameters
    ----------
    state, runner, layers, segmenter, prompts, writer, events : the annotator's
        parts (:class:`~napari_sam.annotation.segmenting.Segmenter`,
        :class:`~napari_sam.annotation.prompt_layers.PromptLayers`, the labels
        writer, the ``EmitterGroup`` with ``committed``)
    scribbles : the annotator's :class:`~napari_sam.annotation.scribbling.Scribbles`
        (their ``refining`` is set here)
    viewer : the viewer (``cursor.position`` for the label under the cursor)

    Attributes
    ----------
    session : the :class:`RefineSession`, or None
    """

    def __init__(self, state: Any, runner: Any, layers: Any, segmenter: Any, prompts: Any,
                 writer: Any, events: Any, scribbles: Any, viewer: Any) -> None:
        self.state, self.runner, self.layers = state, runner, layers
        self.segmenter, self.prompts, self.writer = segmenter, prompts, writer
        self.events, self.viewer = events, viewer
        self.session: RefineSession | None = None
        scribbles.refining = self.base
        scribbles.on_remove = self.stop

    def _say(self, level: str, text: str) -> None:
        self.runner.post(level, text)

    def base(self, idx: Index) -> tuple[int, np.ndarray] | None:
        """``(label_id, mask)`` being refined on slice ``idx``, or None."""
        s = self.session
        if s is None or s.slice_index != tuple(idx):
            return None
        return s.label_id, s.mask

    def stop(self, idx: Index | None = None) -> None:
        """End refining (only when it is on slice ``idx``, if given); labels unchanged."""
        s = self.session
        if s is not None and (idx is None or s.slice_index == tuple(idx)):
            self.session = None

    # ----------------------------------------------------------------- which label
    def label_under_cursor(self, idx: Index) -> int | None:
        """The label under the viewer's cursor on slice ``idx`` (None: none, or the
        cursor is on another slice or off the image)."""
        labels = self.layers.labels
        position = getattr(getattr(self.viewer, "cursor", None), "position", None)
        if position is None or len(position) < labels.ndim:
            return None
        data = np.asarray(labels.world_to_data(np.asarray(position)[-labels.ndim:]), float)
        rc = np.floor(data + 0.5).astype(np.int64)
        n_lead = len(idx)
        shape = labels.data.shape
        if tuple(rc[:n_lead]) != tuple(idx) or not all(
                0 <= v < s for v, s in zip(rc[n_lead:], shape[n_lead:])):
            return None
        value = int(labels.data[tuple(rc)])
        return value or None

    def _choose(self, idx: Index, present: list[int], label_id: Any, at_cursor: bool
                ) -> tuple[int | None, str | None]:
        labels, where = self.layers.labels, self.layers.where(idx)
        here = f"labels on {where}: {_listed(present)}" if present else f"{where} has no labels"
        if label_id is not None:
            from napari_sam.labels import resolve_label_ids

            (label_id,) = resolve_label_ids(label_id, 1, None)
            if label_id not in present:
                return None, (f"label {label_id} does not exist on {where} of {labels.name!r} "
                              f"({here}); choose one of them")
            return label_id, None
        selected = int(getattr(labels, "selected_label", 0) or 0)
        under = self.label_under_cursor(idx)
        order = (under, selected) if at_cursor else (selected, under)
        for candidate in order:
            if candidate and candidate in present:
                return candidate, None
        return None, (f"no label to refine on {where}: select one in {labels.name!r} (its "
                      f"selected label {selected} is not there; {here}), or hover over it "
                      "and press the refine key")

    # ----------------------------------------------------------------- actions
    def start(self, idx: Index, label_id: Any = None, *, at_cursor: bool = False,
              blocking: bool = True) -> list[np.ndarray] | None:
        """See :meth:`napari_sam.Annotator.refine`."""
        plane = np.asarray(self.layers.labels.data[tuple(idx)])
        present = sorted(int(v) for v in np.unique(plane) if v != 0)
        chosen, problem = self._choose(tuple(idx), present, label_id, at_cursor)
        if problem:
            self._say("warning", f"refine: {problem}")
            return []
        assert chosen is not None  # (no problem: a label was chosen)
        mask = plane == chosen
        self.session = RefineSession(tuple(idx), int(chosen), mask)
        where = self.layers.where(idx)
        self._say("status", f"refining label {chosen} on {where} ({int(mask.sum())} px): "
                  "add positive/negative points or strokes; Commit replaces label "
                  f"{chosen} on this slice only; Clear stops")
        return self.segmenter.segment(self.prompts.collect(tuple(idx)), blocking=blocking)

    def owns(self, preview: Any) -> bool:
        """True when ``preview`` is the refinement of the session's label."""
        s = self.session
        return (s is not None and preview is not None and preview.slice_index == s.slice_index
                and any(getattr(p, "source", "") == "refine" for p in preview.prompts))

    def commit(self, clear_prompts: bool = True) -> list[int]:
        """Replace the session's label on its slice by the refined mask (one undo step)."""
        preview, s = self.state.preview, self.session
        if s is None or not self.owns(preview):
            self._say("warning", "nothing to commit: refine a label first")
            return []
        if self.runner.running("propagate"):
            self._say("warning", "a propagation is running; commit when it is done")
            return []
        i = next(k for k, p in enumerate(preview.prompts) if getattr(p, "source", "") == "refine")
        idx, lid, where = s.slice_index, s.label_id, self.layers.where(s.slice_index)
        if preview.empty[i]:
            self._say("warning", f"nothing committed: the refined mask of label {lid} on "
                      f"{where} is empty (label {lid} unchanged); add a positive point, or "
                      "erase the label with napari's eraser")
            return []
        self.layers.ensure_labels_shown()
        try:
            cleared, added = self.writer.replace_object(preview.masks[i], idx, lid)
        except (ValueError, TypeError, IndexError) as err:
            self._say("error", f"refine failed, labels unchanged: {err}")
            return []
        self.session = None
        self.state.preview = None
        if clear_prompts:
            self.prompts.remove(idx)
        labels = self.layers.labels
        labels.selected_label = lid
        self.state.last_commit = Commit(idx, (lid,))
        after = int(np.count_nonzero(np.asarray(labels.data[idx]) == lid))
        self._say("status", f"label {lid} replaced on {where}: {int(s.mask.sum())} -> "
                  f"{after} px ({cleared} cleared, {added} added; "
                  "other labels and slices untouched; undo: Ctrl+Z on the labels layer)")
        self.events.committed(slice_index=idx, label_ids=[lid])
        return [lid]


def _listed(ids: list[int], most: int = 12) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (f" ... ({len(ids)} labels)" if len(ids) > most else "")
