"""One interface for writing objects into labels, one undo step per write.

:class:`LabelsWriter` holds the rules (new ids, existing labels kept unless
``overwrite``, upcast when an id does not fit, one validation pass per call);
two implementations say where the pixels go and what one undo step is:

* :class:`LayerWriter`: a napari ``Labels`` layer (duck-typed, napari is not
  imported). Pixels go through ``layer.data_setitem`` and a write (or a
  :meth:`LabelsWriter.group`) runs inside ``layer.block_history()``, so it is
  one step of the layer's own undo (Ctrl+Z); napari's history is the only
  undo record.
* :class:`ArrayWriter`: a numpy or zarr array (the command line, scripts). A
  write that fails half-way is reverted, so a call writes all or nothing;
  there is no undo stack.

What napari 0.9.2 does (``napari/layers/labels/labels.py``):

* ``data_setitem(indices, value)`` drops pixels that already hold ``value``,
  records ``(indices, old values, value)``, writes in place and refreshes
  the changed part of the view. Outside ``block_history()`` each call is
  its own undo step.
* ``with layer.block_history():`` stages every edit made inside and commits
  them as one step when the block exits *normally*; a block left by an
  exception keeps its edits staged (they would join the next step), so
  :class:`LayerWriter` always leaves it normally and re-raises afterwards.
  Nested blocks would commit early, so :meth:`LabelsWriter.group` opens only
  the outermost one.
* ``data_setitem`` casts ``value`` to the layer's dtype: an id that does not
  fit raises ``OverflowError`` before anything is written, so writers upcast
  first (``layer.data = upcast``, which keeps the undo history).
* ``data_setitem`` ignores ``layer.preserve_labels``; keeping existing labels
  is the job of ``overwrite=False`` here. Dask-backed layers are read-only.
* ``data_setitem(..., refresh=True)`` (the default) uploads the changed box of
  the slice on screen to the GPU after every call, whatever slice was
  written (slow for large slices and many objects: docs/architecture.md,
  "The path of a propagation"). :class:`LayerWriter` passes ``refresh=False``
  and shows the changes once when the step ends (``_partial_labels_refresh``,
  as napari's own batch painting does).

Big writes (a propagation through 60 slices, a whole-stack "Commit
everything") are applied slice by slice: :class:`LayerWriter`'s ``pause``
is called between slices, inside the one undo step, so that the GUI can
repaint (the annotator passes
:func:`~napari_sam.annotation.napari_worker.pump_events`, which lets Qt run
everything but user input: a click or key waits until the write is done, so
nothing can come between the slices of the step).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.labels._checks import (
    as_mask,
    check_fits,
    check_label_id,
    labels_dtype,
    read,
    resolve_slice,
)
from napari_sam.labels.arrays import apply_edit, revert_edit
from napari_sam.labels.edits import LabelEdit, plan_checked, plan_objects
from napari_sam.labels.ids import ensure_dtype

__all__ = ["ArrayWriter", "CommitResult", "LabelsWriter", "LayerWriter"]

Index = tuple[int, ...]


@dataclass(frozen=True)
class CommitResult:
    """What :meth:`LabelsWriter.write_objects` did.

    Attributes
    ----------
    written : ids that got at least one pixel
    skipped : ids whose pixels all held other labels already (``overwrite=False``)
    upcast : ``(old_dtype, new_dtype)`` when the labels were converted, else None
    n_pixels : pixels written per id in ``written``
    """

    written: list[int]
    skipped: list[int]
    upcast: tuple[np.dtype, np.dtype] | None
    n_pixels: list[int]


class LabelsWriter(ABC):
    """Writes masks into a label array ``(*leading, Y, X)`` as objects.

    Every :meth:`write_objects` / :meth:`write_slices` call is one undo step;
    several calls inside one :meth:`group` are one step together.
    """

    def __init__(self) -> None:
        self._depth = 0

    # ------------------------------------------------------------ backend
    @property
    @abstractmethod
    def data(self) -> Any:
        """The label array written into."""

    @abstractmethod
    def _replace(self, data: Any) -> None:
        """Store ``data`` (an upcast copy) as the label array."""

    @abstractmethod
    def _perform(self, edit: LabelEdit) -> None:
        """Write one planned, non-empty edit."""

    @abstractmethod
    def _step(self) -> Any:
        """A context manager: everything performed inside is one undo step."""

    # ------------------------------------------------------------- writes
    @contextmanager
    def group(self) -> Iterator[LabelsWriter]:
        """Every write inside the ``with`` block is ONE undo step (re-entrant)."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            with self._step():
                yield self
        finally:
            self._depth = 0

    def _upcast_for(self, top_id: int) -> tuple[np.dtype, np.dtype] | None:
        old = self.data
        new = ensure_dtype(old, top_id)
        if new is old:
            return None
        self._replace(new)
        return (np.dtype(old.dtype), np.dtype(new.dtype))

    def write_objects(
        self,
        masks: Sequence[Any],
        slice_index: Index | None,
        label_ids: Sequence[int],
        *,
        overwrite: bool = False,
    ) -> CommitResult:
        """Write ``(Y, X)`` bool masks into one slice, each as a new object, as one step.

        Parameters
        ----------
        masks : N bool masks of the slice (or of the whole array with
            ``slice_index=None``)
        slice_index : one int per leading axis (``()`` for 2D labels)
        label_ids : N distinct ids ``>= 1`` (see
            :func:`~napari_sam.labels.resolve_label_ids`)
        overwrite : False: only background pixels are written; True: the masks'
            pixels get the new ids whatever they held. Overlaps between the
            masks go to the smaller one.

        Raises
        ------
        ValueError, TypeError, IndexError
            Masks, slice or ids that do not fit the labels (nothing is written).
        """
        upcast = self._upcast_for(max(label_ids)) if len(label_ids) else None
        edits = plan_objects(self.data, list(masks), slice_index=slice_index,
                             label_ids=list(label_ids), overwrite=overwrite)
        with self.group():
            for edit in edits:
                if edit.n_pixels:
                    self._perform(edit)
        return CommitResult(
            written=[e.label_id for e in edits if e.n_pixels],
            skipped=[e.label_id for e in edits if not e.n_pixels],
            upcast=upcast,
            n_pixels=[e.n_pixels for e in edits if e.n_pixels],
        )

    def write_slices(
        self,
        slices: Mapping[Index, Mapping[int, Any]] | Iterable[tuple[Index, Mapping[int, Any]]],
        label_ids: Collection[int] | None = None,
    ) -> dict[int, int]:
        """Write ``{slice_index: {label_id: (Y, X) mask}}`` as one undo step.

        Each id only fills background pixels (existing labels, also those of
        earlier ids in this call, are kept); slices and ids are written in
        the given order, each mask checked once just before it is written
        (an invalid one raises: a napari layer keeps what was written before
        it as one step, an array reverts it).

        Parameters
        ----------
        slices : a mapping, or an iterable of ``(slice_index, {id: mask})`` pairs
            (e.g. a generator, so that the masks need not all be in memory)
        label_ids : every id that occurs (to upcast once, up front); default:
            read from ``slices`` (which is then iterated twice)

        Returns
        -------
        dict
            Pixels written per id (ids that got none are left out).
        """
        pairs: Iterable[tuple[Index, Mapping[int, Any]]]
        pairs = slices.items() if isinstance(slices, Mapping) else slices
        if label_ids is None:
            pairs = list(pairs)
            label_ids = {int(i) for _, masks in pairs for i in masks}
        ids = {int(i) for i in label_ids}
        if not ids:
            return {}
        self._upcast_for(max(ids))
        dtype = labels_dtype(self.data)
        for i in ids:
            check_fits(dtype, i)
        shape = tuple(int(s) for s in self.data.shape)
        pixels: dict[int, int] = {}
        with self.group():
            for n, (idx, masks) in enumerate(pairs):
                if n:
                    self._between_slices()
                for oid, mask in masks.items():
                    if int(oid) not in ids:
                        raise ValueError(f"label id {oid} is not in label_ids {sorted(ids)}")
                    mask = as_mask(mask)
                    prefix = resolve_slice(shape, idx, mask.shape)
                    edit = plan_checked(self.data, mask, prefix, int(oid), False, dtype)
                    if edit.n_pixels:
                        self._perform(edit)
                        pixels[int(oid)] = pixels.get(int(oid), 0) + edit.n_pixels
        return pixels

    def _between_slices(self) -> None:  # noqa: B027 - a hook, nothing by default
        """Called between two slices of :meth:`write_slices` (inside the undo step)."""

    def replace_object(
        self, mask: Any, slice_index: Index, label_id: int
    ) -> tuple[int, int]:
        """Make ``mask`` the object ``label_id`` on one slice, as ONE undo step.

        The object's pixels on that slice outside ``mask`` become background
        (0); ``mask`` takes the background pixels under it (the object's own
        pixels stay); pixels of other labels and of other slices never change.
        For correcting one existing label (the annotator's "refine").

        Returns
        -------
        ``(pixels cleared, pixels added)``

        Raises
        ------
        ValueError, TypeError, IndexError
            A mask, slice or id that does not fit the labels (nothing is written).
        """
        lid = check_label_id(label_id)
        mask = as_mask(mask)
        shape = tuple(int(s) for s in self.data.shape)
        prefix = resolve_slice(shape, slice_index, mask.shape)
        self._upcast_for(lid)
        dtype = labels_dtype(self.data)
        check_fits(dtype, lid)
        plane = read(self.data, prefix)
        rows, cols = np.nonzero((plane == lid) & ~mask)
        lead = tuple(np.full(rows.size, i, dtype=np.intp) for i in prefix)
        clear = LabelEdit((*lead, rows, cols), 0, lid, int(rows.size),
                          np.full(rows.size, lid, dtype=dtype))
        add = plan_checked(self.data, mask, prefix, lid, False, dtype)
        with self.group():
            if clear.n_pixels:
                self._perform(clear)
            if add.n_pixels:
                self._perform(add)
        return clear.n_pixels, add.n_pixels


class LayerWriter(LabelsWriter):
    """Writes into a napari Labels layer through its undo history.

    Parameters
    ----------
    layer : napari ``Labels`` (duck-typed: ``data``, ``data_setitem``,
        ``block_history``, ``refresh``)
    pause : called between the slices of :meth:`~LabelsWriter.write_slices`
        (inside its undo step), e.g. to let the GUI repaint; None: never
    """

    def __init__(self, layer: Any, pause: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.pause = pause
        self._changed = False

    @property
    def data(self) -> Any:
        """``layer.data``."""
        return self.layer.data

    def _replace(self, data: Any) -> None:
        self.layer.data = data  # napari keeps the undo history

    def _perform(self, edit: LabelEdit) -> None:
        self.layer.data_setitem(edit.indices, edit.value, refresh=False)  # shown at the end
        self._changed = True

    def _between_slices(self) -> None:
        if self.pause is not None:
            self.pause()

    def _show(self) -> None:
        """Show what the step wrote: one partial refresh (napari's batch painting does the
        same), else a full refresh."""
        if not self._changed:
            return
        self._changed = False
        partial = getattr(self.layer, "_partial_labels_refresh", None)
        (partial if callable(partial) else self.layer.refresh)()

    @contextmanager
    def _step(self) -> Iterator[None]:
        error: BaseException | None = None
        with self.layer.block_history():
            try:
                yield
            except BaseException as err:  # leave the block normally: its edits are one step
                error = err
        self._show()
        if error is not None:
            raise error


class ArrayWriter(LabelsWriter):
    """Writes into a numpy or zarr label array; a failed write is reverted.

    Parameters
    ----------
    labels : writable numpy or zarr array of int. A numpy array that must be
        upcast for a new id is replaced by a copy: read the result from
        :attr:`data`.
    """

    def __init__(self, labels: Any) -> None:
        super().__init__()
        labels_dtype(labels)
        self._data = labels
        self._journal: list[LabelEdit] = []

    @property
    def data(self) -> Any:
        """The label array (a new one after an upcast)."""
        return self._data

    def _replace(self, data: Any) -> None:
        self._data = data

    def _perform(self, edit: LabelEdit) -> None:
        apply_edit(self._data, edit, check=False)
        self._journal.append(edit)

    @contextmanager
    def _step(self) -> Iterator[None]:
        self._journal = []
        try:
            yield
        except BaseException:
            for edit in reversed(self._journal):
                revert_edit(self._data, edit, check=False)
            raise
        finally:
            self._journal = []
