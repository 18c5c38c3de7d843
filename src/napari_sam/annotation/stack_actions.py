"""Stack actions of the annotator: propagation through z and "everything" mode.

A mixin of :class:`napari_sam.annotator.Annotator`, kept apart to keep each
file readable. It imports neither Qt nor napari: layers are used through their
public methods and workers are started with the host's ``_start_worker``.

Host attributes used: ``viewer``, ``geometry``, ``embedder``, ``labels_layer``,
``contrast_limits``, ``events``, ``_closed``, ``_propagation``,
``_everything``, ``_everything_layer``, ``_everything_slice``, ``_everything_stack``,
``_last_commit``, ``_resolve_slice``, ``_notify``, ``_status``,
``_start_worker``, ``_layer_kwargs``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np

from napari_sam.annotation.propagating import PropagationWriter, choose_ids, seeds_from_slice
from napari_sam.annotation.workers import reporting
from napari_sam.annotation.writing import resolve_label_ids, write_masks

__all__ = ["StackActionsMixin"]

Index = tuple[int, ...]


class StackActionsMixin:
    """:meth:`propagate`, :meth:`segment_everything` and :meth:`commit_everything`."""

    # ============================================================ propagate
    def propagate(
        self,
        label_id: int | Sequence[int] | None = None,
        direction: str = "both",
        z_range: tuple[int, int] | None = None,
        *,
        blocking: bool = True,
        **options: Any,
    ) -> dict[int, list[int]] | Any:
        """Propagate committed object(s) of the current slice through z.

        Parameters
        ----------
        label_id : int, sequence of int, or None
            Objects to propagate. Default: the ids of the last commit if it was
            on this slice, else every label on this slice.
        direction : ``"both"``, ``"up"`` (towards higher z) or ``"down"``
        z_range : ``(start, stop)``: only slices ``start <= z < stop`` (Python
            slice rules, as :func:`~napari_sam.propagation.propagate_iter`), or None
        blocking : compute here (True) or in a worker (False, GUI)
        **options : passed to :func:`napari_sam.propagation.propagate_iter`
            (e.g. ``prompt_mode``, ``stop_markers``, ``iou_threshold``)

        Returns
        -------
        Blocking: ``{object_id: [z, ...]}`` of the slices written (seed first).
        Asynchronous: the worker. None when there is nothing to do (with a
        notification). z is the last leading axis (axis 0 of a ZYX image; for
        TZYX the current time point only). Every slice is written on arrival
        without changing other objects' labels; the whole propagation is ONE
        ``labels_layer.undo()`` step.
        """
        if self.geometry.n_lead == 0:
            self._notify("warning", "propagation needs a stack: this image is 2D")
            return None
        if self._propagation is not None:
            self._notify("warning", "a propagation is already running")
            return None
        idx = self._resolve_slice(None)
        if idx is None:
            return None
        current = np.asarray(self.labels_layer.data[idx])
        last = self._last_commit[1] if self._last_commit and self._last_commit[0] == idx else None
        ids, problem = choose_ids(set(np.unique(current).tolist()) - {0}, label_id, last)
        if problem:
            self._notify("warning", f"nothing to propagate from slice {idx}: {problem}; "
                         "commit an object first")
            return None
        lead = idx[:-1]
        run = partial(self._propagation_steps, lead, seeds_from_slice(current, ids, idx[-1]),
                      self.contrast_limits, direction, z_range, options)
        # asynchronous: slices are shown as they arrive and recorded as one undo step at the end
        writer = PropagationWriter(self.labels_layer, lead, ids, deferred=not blocking)
        if blocking:
            with writer:
                for update in run():
                    writer.write(update)
            self.events.propagated(slice_index=idx, written=writer.written)
            return writer.written

        def on_update(update: Any) -> None:
            if not self._closed:
                self.events.propagation_step(slice_index=writer.write(update))

        def on_finished() -> None:
            writer.close()
            self._propagation = None
            if not self._closed:
                n = sum(len(v) for v in writer.written.values())
                self._status(f"propagated {ids}: {n} object-slice(s) written (one undo step)")
                self.events.propagated(slice_index=idx, written=writer.written)

        self._propagation = self._start_worker(
            run, desc=f"SAM: propagating {ids}", total=self.geometry.lead_shape[-1],
            on_yield=on_update, on_finished=on_finished,
        )
        return self._propagation

    def _stack_at(self, lead: Index) -> Any:
        """The ``(Z, Y, X[, C])`` stack at the leading indices ``lead`` (lazy; RGBA -> RGB)."""
        source = self.embedder.source
        stack = source[lead] if lead else source
        if self.geometry.rgb and self.geometry.channels == 4:
            stack = stack[..., :3]
        return stack

    def _propagation_steps(
        self, lead: Index, seeds: dict, cl: tuple[float, float], direction: str,
        z_range: Any, options: dict,
    ) -> Iterator[Any]:
        from napari_sam.propagation import propagate_iter

        embedder = self.embedder
        predictor = embedder.load_predictor()
        stack = self._stack_at(lead)
        yield from propagate_iter(
            stack, seeds, predictor, direction=direction, z_range=z_range, contrast_limits=cl,
            embeddings=lambda z: embedder.embedding((*lead, int(z)), cl), **options,
        )

    # ========================================================== everything
    # "Everything" (automatic segmentation of a slice, napari_sam.everything):
    # the result goes to a separate Labels layer for review; commit_everything
    # merges it into the labels, keeping existing labels.
    def segment_everything(
        self,
        slice: Sequence[int] | None = None,
        *,
        blocking: bool = True,
        stack: bool = False,
        **params: Any,
    ) -> np.ndarray | None:
        """Segment every object of a slice automatically, into :attr:`everything_layer`.

        The result goes to a separate Labels layer ``"<image> everything"`` for
        review (its slice is replaced); :meth:`commit_everything` merges it into
        :attr:`labels_layer`. ``params`` go to
        :func:`napari_sam.everything.segment_everything` (e.g. ``points_per_side``).
        The slice's cached embedding is reused.

        ``stack=True`` segments every slice of the stack holding ``slice`` (z,
        at the same time point) with
        :func:`napari_sam.everything.segment_everything_stack`, objects linked
        through z (``params`` may also hold its ``min_z_extent``, ``link_iou``,
        ...); the whole stack of the everything layer is replaced, and
        :meth:`commit_everything` then commits 3D objects.

        Returns the ``(Y, X)`` (or ``(Z, Y, X)``) uint32 labels (blocking), else None.
        """
        idx = self._resolve_slice(slice)
        if idx is None or self._closed or self._everything is not None:
            return None
        if stack and self.geometry.n_lead == 0:
            self._notify("warning", "'everything' on the whole stack needs a stack: this "
                         "image is 2D")
            return None
        cancel = threading.Event()
        target = idx[:-1] if stack else idx
        steps = self._everything_stack_steps if stack else self._everything_steps
        run = partial(steps, target, self.contrast_limits, params, cancel)
        if blocking:
            gen = run()
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    self._show_everything(target, stop.value, stack=stack)
                    return stop.value

        def done(labels: np.ndarray) -> None:
            if not self._closed:
                self._show_everything(target, labels, stack=stack)

        def finished() -> None:
            self._everything = None

        def progressed(value: Any) -> None:
            # the worker's bar counts yields; everything mode's own count is exact
            pbar = getattr(worker, "pbar", None)
            if isinstance(value, tuple) and pbar is not None and not self._closed:
                pbar.total = value[1]
                pbar.update(value[0] - pbar.n)

        what = "the stack" if stack else f"slice {idx}"
        worker = self._start_worker(run, desc=f"SAM: everything on {what}", total=0,
                                    on_result=done, on_yield=progressed, on_finished=finished)
        self._everything = (worker, cancel)
        return None

    def _everything_steps(
        self, idx: Index, cl: tuple[float, float], params: dict, cancel: Any
    ) -> Iterator[str]:
        from napari_sam.everything import segment_everything

        predictor = self.embedder.load_predictor()
        yield "model"
        embedding = self.embedder.embedding(idx, cl)
        yield "embedded"
        call = partial(
            segment_everything, self.embedder.read_slice(idx), predictor=predictor,
            contrast_limits=cl, embedding=embedding, cancel=cancel, **params,
        )
        result = yield from reporting(call)  # (done, total): embeddings and batches
        return np.asarray(result.labels)

    def _everything_stack_steps(
        self, lead: Index, cl: tuple[float, float], params: dict, cancel: Any
    ) -> Iterator[Any]:
        from napari_sam.everything import segment_everything_stack

        embedder = self.embedder
        predictor = embedder.load_predictor()
        yield "model"
        stack = self._stack_at(lead)
        call = partial(
            segment_everything_stack, stack, predictor=predictor, contrast_limits=cl,
            embeddings=lambda z: embedder.embedding((*lead, int(z)), cl), cancel=cancel,
            **params,
        )
        result = yield from reporting(call)  # (done, total): slices
        return np.asarray(result.labels)

    @property
    def everything_layer(self) -> Any:
        """The Labels layer holding "everything" results (None before the first)."""
        return self._everything_layer

    def _show_everything(self, idx: Index, labels: np.ndarray, stack: bool = False) -> None:
        """Show a result in the everything layer: a slice ``idx``, or (``stack``) the
        whole stack at the leading indices ``idx``."""
        layer = self._everything_layer
        if layer is None or layer not in self.viewer.layers:
            layer = self._everything_layer = self.viewer.add_labels(
                np.zeros(self.geometry.shape, dtype=np.uint32), opacity=0.6,
                **self._layer_kwargs("everything"),
            )
        if self._everything_slice is not None and self._everything_slice != idx:
            layer.data[self._everything_slice] = 0  # one pending result at a time
        layer.data[idx] = labels
        layer.refresh()
        self._everything_slice = idx
        self._everything_stack = stack
        n = len(np.unique(labels)) - int((labels == 0).any())
        where = "in the stack (3D)" if stack else f"on slice {idx}"
        self._status(f"everything: {n} object(s) {where}; review, then 'Commit everything'")

    def commit_everything(self, overwrite: bool = False) -> list[int]:
        """Merge the everything result of its slice into :attr:`labels_layer` (one undo step).

        Every object gets a new id (max existing + 1, ...); existing labels are
        kept unless ``overwrite``. The everything layer's slice is cleared. A
        whole-stack result (``segment_everything(stack=True)``) commits its 3D
        objects, one id each, always keeping existing labels.
        """
        layer, idx = self._everything_layer, self._everything_slice
        if layer is None or idx is None:
            self._notify("warning", "nothing to commit: run 'Everything' first")
            return []
        if self._propagation is not None:
            self._notify("warning", "a propagation is running; commit when it is done")
            return []
        if self._everything_stack:
            return self._commit_everything_stack(idx)
        current = np.asarray(layer.data[idx])
        masks = [current == i for i in np.unique(current) if i != 0]
        if not masks:
            self._notify("warning", f"the everything layer has no objects on slice {idx}")
            return []
        ids = resolve_label_ids(None, len(masks), self.labels_layer.data)
        result = write_masks(self.labels_layer, masks, idx, ids, overwrite=overwrite)
        layer.data[idx] = 0
        layer.refresh()
        self._everything_slice = None
        self._status(f"committed {len(result.written)} object(s) from everything on slice {idx}")
        self.events.committed(slice_index=idx, label_ids=result.written)
        return result.written

    def _commit_everything_stack(self, lead: Index) -> list[int]:
        """Commit the 3D objects of a whole-stack everything result (one undo step).

        Each object gets a new id; only background pixels are written (existing
        labels are always kept). Objects that existing labels cover entirely
        get no id and are not returned.
        """
        from types import SimpleNamespace

        layer = self._everything_layer
        block = np.asarray(layer.data[lead])  # (Z, Y, X)
        found = [int(i) for i in np.unique(block) if i != 0]
        if not found:
            self._notify("warning", "the everything layer has no objects in this stack")
            return []
        free = np.asarray(self.labels_layer.data[lead]) == 0  # background, (Z, Y, X)
        objects = [int(i) for i in np.unique(block[free]) if i != 0]
        covered = len(found) - len(objects)
        if not objects:
            layer.data[lead] = 0
            layer.refresh()
            self._everything_slice = None
            self._everything_stack = False
            self._notify("warning", f"all {covered} object(s) of everything lie under existing "
                         "labels: nothing was committed")
            return []
        ids = resolve_label_ids(None, len(objects), self.labels_layer.data)
        new_id = dict(zip(objects, ids))
        writer = PropagationWriter(self.labels_layer, lead, ids)
        with writer:
            for z in range(block.shape[0]):
                present = [int(i) for i in np.unique(block[z]) if i != 0]
                if present:
                    masks = {new_id[o]: block[z] == o for o in present}
                    writer.write(SimpleNamespace(z=z, masks=masks))
        layer.data[lead] = 0
        layer.refresh()
        self._everything_slice = None
        self._everything_stack = False
        written = [i for i in ids if writer.written.get(i)]
        left_out = f"; {covered} under existing labels left out" if covered else ""
        self._status(f"committed {len(written)} 3D object(s) from everything (one undo step)"
                     f"{left_out}")
        self.events.committed(slice_index=(*lead, 0), label_ids=written)
        return written
