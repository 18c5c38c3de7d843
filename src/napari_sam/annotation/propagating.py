"""Which committed objects to propagate, their seeds, and writing the results.

Qt- and napari-free (the Labels layer is duck-typed; see
:mod:`napari_sam.annotation.writing`). z is the last leading axis of the image:
axis 0 of ``(Z, Y, X)``, axis 1 of ``(T, Z, Y, X)`` (the time point is fixed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.annotation.writing import HistoryGroup, write_slice
from napari_sam.labels import apply_edit, plan_write

__all__ = ["PropagationWriter", "choose_ids", "seeds_from_slice"]


def choose_ids(
    present: set[int], label_id: Any, last_commit: Sequence[int] | None
) -> tuple[list[int], str | None]:
    """The object ids to propagate from a slice whose labels are ``present``.

    ``label_id`` None: the ids of the last commit on this slice (``last_commit``)
    that are still there, else every id present. Returns ``(ids, problem)``;
    ``problem`` is a message when there is nothing (valid) to propagate.
    """
    if label_id is None:
        ids = [i for i in (last_commit or ()) if i in present] or sorted(present)
    else:
        ids = [int(label_id)] if np.isscalar(label_id) else [int(i) for i in label_id]
    missing = [i for i in ids if i not in present]
    if missing:
        return [], f"label(s) {missing} are not on this slice"
    if not ids:
        return [], "this slice has no labels"
    return ids, None


def seeds_from_slice(labels_slice: np.ndarray, ids: Sequence[int], z: int) -> dict:
    """``{object_id: {z: (Y, X) bool mask}}`` from a slice of the labels."""
    labels_slice = np.asarray(labels_slice)
    return {int(oid): {int(z): labels_slice == oid} for oid in ids}


class PropagationWriter:
    """Writes propagation updates into a Labels layer as ONE undo step.

    Each update's masks only fill background pixels (other objects' labels
    are kept). Use it as a context manager or call :meth:`open` / :meth:`close`;
    :meth:`close` records everything written as one undo step, also after a
    cancel or an error.

    Parameters
    ----------
    layer : napari Labels layer (duck-typed: ``data``, ``data_setitem``,
        ``block_history``, ``refresh``)
    lead : the fixed leading indices before z (``()`` for ZYX, ``(t,)`` for TZYX)
    ids : the object ids being propagated
    deferred : False: write through ``data_setitem`` inside one open
        ``block_history()`` (for a loop that runs to the end without the event
        loop). True (a worker yielding slices while the GUI runs): write each
        slice straight into the data and refresh, so it is seen at once, and
        record all of them with ``data_setitem`` in one ``block_history()``
        block in :meth:`close`. An open napari history group would be closed
        early by a paint stroke in between (napari commits staged edits at the
        end of a stroke), splitting the step; the deferred record cannot be
        interleaved.

    Attributes
    ----------
    written : ``{object_id: [z, ...]}`` in arrival order
    """

    def __init__(
        self, layer: Any, lead: tuple[int, ...], ids: Sequence[int], *, deferred: bool = False
    ) -> None:
        self.layer = layer
        self.lead = tuple(lead)
        self.deferred = deferred
        self.written: dict[int, list[int]] = {int(i): [] for i in ids}
        self._group = HistoryGroup(layer)
        self._edits: list[Any] = []

    def open(self) -> PropagationWriter:
        """Start the undo group (immediate mode)."""
        if not self.deferred:
            self._group.open()
        return self

    def write(self, update: Any) -> tuple[int, ...]:
        """Write one ``SliceUpdate`` (``.z``, ``.masks``); returns its slice index."""
        idx = (*self.lead, int(update.z))
        if self.deferred:
            for oid, mask in update.masks.items():
                edit = plan_write(self.layer.data, np.asarray(mask, dtype=bool),
                                  slice_index=idx, label_id=int(oid))
                if edit.n_pixels:
                    apply_edit(self.layer.data, edit, check=False)
                    self._edits.append(edit)
            self.layer.refresh()
        else:
            write_slice(self.layer, idx, update.masks)
        for oid in update.masks:
            self.written.setdefault(int(oid), []).append(int(update.z))
        return idx

    def close(self) -> None:
        """Record everything written as one undo step."""
        if not self.deferred:
            self._group.close()
            return
        edits, self._edits = self._edits, []
        data = self.layer.data
        with HistoryGroup(self.layer):
            for edit in edits:
                still = np.asarray(data[edit.indices]) == edit.value  # not painted over since
                indices = tuple(i[still] for i in edit.indices)
                if indices[0].size:
                    data[indices] = edit.previous_values[still]  # back to before, unrecorded
                    self.layer.data_setitem(indices, edit.value)  # and again, recorded

    def __enter__(self) -> PropagationWriter:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()
