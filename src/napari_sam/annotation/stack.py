"""Stack work of the annotator: propagation through z and everything mode, on layers.

Qt- and napari-free (layers duck-typed). :class:`StackActions` starts the jobs
of :mod:`napari_sam.annotation.stack_jobs` on the runner and applies their
results on the main thread: propagated slices are shown in the preview layer
as they arrive and written into the labels as one undo step when the job
ends; everything results go to the review layer until committed. It is given
everything it uses (no host object).

Big writes keep the GUI drawing: a propagation's slices are cropped in its
worker (:func:`~napari_sam.annotation.propagating.preparing`), and a
whole-stack "Commit everything" is a job (``"everything"``, progress and
Cancel) whose worker finds, per slice, each object's box and which objects
still have background under them; the main thread then only writes, slice by
slice (the writer's ``pause`` between slices), as one undo step.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import numpy as np

from napari_sam.annotation.jobs import Job, Progress
from napari_sam.annotation.propagating import (
    Crop,
    PendingSlices,
    choose_ids,
    place,
    preparing,
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
        writing = self.runner.writing()  # one write into the labels at a time
        if writing:
            what = ("a propagation is already running" if writing[0].kind == "propagate" else
                    f"{writing[0].title} is running; propagate when it is done")
            self._say("warning", what)
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
        job.steps = preparing(job.steps)  # masks cropped in the worker
        pending = PendingSlices(lead, ids, display=self.layers.preview, labels=labels,
                                on_screen=lambda i: i == self.state.current_slice)

        def arrived(value: Any) -> None:
            update = getattr(value, "update", value)  # an Arrived, prepared in the worker
            self.events.propagation_step(  # records and masks: the review of doubtful slices
                slice_index=pending.add(value), masks=update.masks,
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
        if self.runner.running("everything"):  # one everything-kind job at a time, said
            busy = ", ".join(self.runner.titles("everything"))
            self._say("warning", f"Everything waits: {busy} is still running; run it again "
                      "when that is done, or press Cancel")
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

    def commit_everything(self, overwrite: bool = False, *, blocking: bool = True) -> Any:
        """See :meth:`napari_sam.Annotator.commit_everything`; a whole-stack result runs as
        a job (``blocking=False``: in a worker, returns its handle)."""
        pending, layer = self.state.everything, self.layers.everything
        if pending is None or layer is None:
            self._say("warning", "nothing to commit: run 'Everything' first")
            return []
        if self.runner.running("propagate"):
            self._say("warning", "a propagation is running; commit when it is done")
            return []
        if pending.stack:
            return self._commit_stack(pending, layer, blocking)
        index = pending.index
        found = np.asarray(layer.data[index])  # (Y, X)
        objects = [int(i) for i in np.unique(found) if i != 0]
        if not objects:
            self._say("warning", f"the everything layer has no objects on "
                      f"{self.layers.where(index)}")
            return []
        self.layers.ensure_labels_shown()
        labels = self.layers.labels
        ids = resolve_label_ids(None, len(objects), labels.data)
        result = self.writer.write_objects([found == o for o in objects], index, ids,
                                           overwrite=overwrite)
        written = result.written
        self._clear_everything(layer, index)
        self._say("status", f"committed {len(written)} object(s) from everything on "
                  f"{self.layers.where(index)}")
        self.events.committed(slice_index=index, label_ids=written)
        return written

    def _commit_stack(self, pending: EverythingResult, layer: Any, blocking: bool) -> Any:
        """Commit a whole-stack result: 3D objects, one id each, existing labels kept."""
        if self.runner.running("everything"):
            self._say("warning", "an everything job is running (or committing); commit when "
                      "it is done")
            return []
        index, labels = pending.index, self.layers.labels
        job = Job("everything", "committing everything (the stack)",
                  _stack_plan_steps(layer.data, labels.data, index),
                  total=self.layers.geometry.lead_shape[-1], writes=True)
        out: list[int] = []

        def write(plan: StackPlan | None) -> None:
            if plan is None:
                self._say("info", "commit everything cancelled: nothing was written")
                return
            if not plan.n_objects:
                self._say("warning", "the everything layer has no objects in this stack")
                return
            out.extend(self._write_stack(pending, layer, plan))

        job.on_result = write
        handle = self.runner.run(job, blocking=blocking)
        return out if blocking else handle

    def _write_stack(self, pending: EverythingResult, layer: Any, plan: StackPlan) -> list[int]:
        """Write a prepared whole-stack result (main thread), slice by slice, one step."""
        index, labels = pending.index, self.layers.labels
        objects = sorted(plan.free)  # the others lie wholly under existing labels
        covered = plan.n_objects - len(objects)
        if not objects:
            self._clear_everything(layer, index, pending, plan.slices)
            self._say("warning", f"all {covered} object(s) of everything lie under "
                      "existing labels: nothing was committed")
            return []
        self.layers.ensure_labels_shown()
        ids = resolve_label_ids(None, len(objects), labels.data)
        new_id = dict(zip(objects, ids))
        shape = self.layers.geometry.slice_shape
        slices = (((*index, z), {new_id[o]: place(crop, shape) for o, crop in crops.items()
                                 if o in new_id})
                  for z, crops in sorted(plan.slices.items()))
        pixels = self.writer.write_slices(slices, label_ids=ids)
        written = [i for i in ids if pixels.get(i)]
        self._clear_everything(layer, index, pending, plan.slices)
        left_out = f"; {covered} under existing labels left out" if covered else ""
        self._say("status", f"committed {len(written)} 3D object(s) from everything (one undo "
                  f"step){left_out}")
        self.events.committed(slice_index=(*index, 0), label_ids=written)
        return written

    def _clear_everything(self, layer: Any, index: Index, pending: Any = None,
                          slices: Any = None) -> None:
        """Clear the review layer at ``index`` (only the ``slices`` along z that hold
        objects, the GUI drawn in between), unless another result is shown now."""
        if pending is not None and self.state.everything is not pending:
            return
        if slices is None:
            layer.data[index] = 0
        else:
            pause = getattr(self.writer, "pause", None)
            for z in slices:
                at = (*index, z)  # (mypy refuses a starred index inside [] under 3.10)
                layer.data[at] = 0
                if callable(pause):
                    pause()
        layer.refresh()
        self.state.everything = None


class StackPlan:
    """A whole-stack everything result prepared for writing (in a worker).

    Attributes
    ----------
    slices : ``{z: {object: crop}}``, each object's bounding-box mask per slice
    free : the objects with background pixels of the labels under them
    n_objects : every object of the result
    """

    def __init__(self) -> None:
        self.slices: dict[int, dict[int, Crop]] = {}
        self.free: set[int] = set()
        self.objects: set[int] = set()

    @property
    def n_objects(self) -> int:
        """Objects in the result."""
        return len(self.objects)


def _stack_plan_steps(found: Any, labels: Any, index: Index) -> Any:
    """The steps of the commit job: read the result and the labels slice by slice (no
    layer, only their arrays), return a :class:`StackPlan`, or None when cancelled."""

    def steps(cancel: threading.Event) -> Generator[Any, None, StackPlan | None]:
        from scipy import ndimage as ndi

        plan = StackPlan()
        n = int(found.shape[len(index)])
        for z in range(n):
            if cancel.is_set():
                return None
            at = (*index, z)
            f = np.asarray(found[at])
            if f.any():
                free = np.asarray(labels[at]) == 0
                plan.free.update(int(i) for i in np.unique(f[free & (f != 0)]))
                boxes = ndi.find_objects(f.astype(np.int64, copy=False), max_label=int(f.max()))
                crops = {}
                for o in np.unique(f[f != 0]).tolist():
                    box = boxes[o - 1]
                    crops[o] = (box[0].start, box[1].start, f[box] == o)
                plan.slices[z] = crops
                plan.objects.update(crops)
            yield Progress(z + 1, n)
        return plan

    return steps
