"""Stack work of the annotator: propagation through z and everything mode, on layers.

Qt- and napari-free (layers duck-typed). :class:`StackActions` starts the jobs
of :mod:`napari_sam.annotation.stack_jobs` on the runner and applies their
results on the main thread: propagated slices are shown in the preview layer
as they arrive and written into the labels as one undo step when the job
ends; everything results go to the review layer until committed. It is given
everything it uses (no host object).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam.annotation.propagating import (
    PendingSlices,
    choose_ids,
    reach_summary,
    seeds_from_slice,
)
from napari_sam.annotation.stack_jobs import everything_job, propagation_job
from napari_sam.annotation.state import EverythingResult
from napari_sam.labels import resolve_label_ids

__all__ = ["StackActions"]

Index = tuple[int, ...]


class StackActions:
    """Propagation and everything mode of one annotator.

    Parameters
    ----------
    state : the annotator's :class:`~napari_sam.annotation.state.AnnotatorState`
    runner : its :class:`~napari_sam.annotation.jobs.JobRunner`
    embedder : its :class:`~napari_sam.annotation.embedder.SliceEmbedder`
    layers : its :class:`~napari_sam.annotation.layer_set.AnnotatorLayers`
    writer : the :class:`~napari_sam.labels.LabelsWriter` of the labels layer
    events : napari ``EmitterGroup`` with ``committed``, ``propagated`` and
        ``propagation_step`` (duck-typed: ``events.committed(**kwargs)``)
    """

    def __init__(
        self, state: Any, runner: Any, embedder: Any, layers: Any, writer: Any, events: Any
    ) -> None:
        self.state = state
        self.runner = runner
        self.embedder = embedder
        self.layers = layers
        self.writer = writer
        self.events = events

    def _say(self, level: str, text: str) -> None:
        self.runner.post(level, text)

    # ============================================================ propagate
    def propagate(
        self, idx: Index, cl: tuple[float, float], label_id: Any, direction: str,
        z_range: Any, options: dict, *, blocking: bool,
    ) -> Any:
        """See :meth:`napari_sam.Annotator.propagate` (``idx``: the seed slice)."""
        if self.runner.running("propagate"):
            self._say("warning", "a propagation is already running")
            return None
        labels = self.layers.labels
        current = np.asarray(labels.data[idx])
        last = self.state.last_commit
        last_ids = last.label_ids if last is not None and last.slice_index == idx else None
        ids, problem = choose_ids(set(np.unique(current).tolist()) - {0}, label_id, last_ids)
        if problem:
            self._say("warning", f"nothing to propagate from {self.layers.where(idx)}: "
                      f"{problem}; commit an object first")
            return None
        lead = idx[:-1]
        job = propagation_job(self.embedder, lead, seeds_from_slice(current, ids, idx[-1]), cl,
                              ids=ids, direction=direction, z_range=z_range, options=options)
        pending = PendingSlices(lead, ids, display=self.layers.preview, labels=labels)

        def arrived(update: Any) -> None:
            self.events.propagation_step(  # records and masks: the review of doubtful slices
                slice_index=pending.add(update), masks=update.masks,
                records=tuple(getattr(update, "records", {}).values()))

        def finished() -> None:  # also after a cancel, an error or close: nothing is lost
            pending.flush(self.writer, self.layers.geometry.slice_shape)
            if not self.runner.closed:
                n = sum(len(v) for v in pending.written.values())
                reached = {i: [idx[-1], *zs] for i, zs in pending.written.items()}  # + seed
                reach = reach_summary(reached, pending.records, self.layers.axis_names[-1])
                self._say("status", f"propagated {ids}: {n} object-slice(s) written (one "
                          f"undo step). Reached {reach}")
                self.events.propagated(slice_index=idx, written=pending.written,
                                       records=tuple(pending.records))

        job.on_item, job.on_finished = arrived, finished
        handle = self.runner.run(job, blocking=blocking)
        return pending.written if blocking else handle

    # ========================================================== everything
    def segment_everything(
        self, idx: Index, cl: tuple[float, float], params: dict, *, stack: bool, blocking: bool
    ) -> np.ndarray | None:
        """See :meth:`napari_sam.Annotator.segment_everything`."""
        if self.runner.running("everything"):
            return None
        if stack and self.layers.geometry.n_lead == 0:
            self._say("warning", "'everything' on the whole stack needs a stack: this "
                      "image is 2D")
            return None
        target = idx[:-1] if stack else idx
        job = everything_job(self.embedder, target, cl, params, stack=stack)
        job.on_result = lambda labels: self.show_everything(target, labels, stack=stack)
        result = self.runner.run(job, blocking=blocking)
        return result if blocking else None

    def show_everything(self, index: Index, labels: np.ndarray, *, stack: bool) -> None:
        """Show a result in the everything layer: slice ``index``, or (``stack``) the
        whole stack at the leading indices ``index``; one pending result at a time."""
        layer = self.layers.ensure_everything()
        pending = self.state.everything
        if pending is not None and pending.index != index:
            layer.data[pending.index] = 0
        layer.data[index] = labels
        layer.refresh()
        n = len(np.unique(labels)) - int((labels == 0).any())
        self.state.everything = EverythingResult(tuple(index), stack, n)
        where = "in the stack (3D)" if stack else f"on {self.layers.where(index)}"
        self._say("status", f"everything: {n} object(s) {where}; review, then "
                  "'Commit everything'")

    def commit_everything(self, overwrite: bool = False) -> list[int]:
        """See :meth:`napari_sam.Annotator.commit_everything`."""
        pending, layer = self.state.everything, self.layers.everything
        if pending is None or layer is None:
            self._say("warning", "nothing to commit: run 'Everything' first")
            return []
        if self.runner.running("propagate"):
            self._say("warning", "a propagation is running; commit when it is done")
            return []
        index = pending.index
        found = np.asarray(layer.data[index])  # (Y, X), or (Z, Y, X) for a stack
        objects = [int(i) for i in np.unique(found) if i != 0]
        if not objects:
            where = "in this stack" if pending.stack else f"on {self.layers.where(index)}"
            self._say("warning", f"the everything layer has no objects {where}")
            return []
        self.layers.ensure_labels_shown()
        labels = self.layers.labels
        if pending.stack:  # 3D objects, one id each, existing labels always kept
            free = np.asarray(labels.data[index]) == 0
            covered = len(objects)
            objects = [int(i) for i in np.unique(found[free]) if i != 0]  # not covered whole
            covered -= len(objects)
            if not objects:
                self._clear_everything(layer, index)
                self._say("warning", f"all {covered} object(s) of everything lie under "
                          "existing labels: nothing was committed")
                return []
            ids = resolve_label_ids(None, len(objects), labels.data)
            new_id = dict(zip(objects, ids))
            slices = (((*index, z), {new_id[int(o)]: found[z] == o
                                     for o in np.unique(found[z]) if int(o) in new_id})
                      for z in range(found.shape[0]))
            pixels = self.writer.write_slices(slices, label_ids=ids)
            written = [i for i in ids if pixels.get(i)]
            left_out = f"; {covered} under existing labels left out" if covered else ""
            where = f"3D object(s) from everything (one undo step){left_out}"
            at = (*index, 0)
        else:
            ids = resolve_label_ids(None, len(objects), labels.data)
            result = self.writer.write_objects([found == o for o in objects], index, ids,
                                               overwrite=overwrite)
            written = result.written
            where, at = f"object(s) from everything on {self.layers.where(index)}", index
        self._clear_everything(layer, index)
        self._say("status", f"committed {len(written)} {where}")
        self.events.committed(slice_index=at, label_ids=written)
        return written

    def _clear_everything(self, layer: Any, index: Index) -> None:
        layer.data[index] = 0
        layer.refresh()
        self.state.everything = None
