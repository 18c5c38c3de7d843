"""Writing masks into a napari Labels layer through its undo history.

Duck-typed on napari's Labels layer API (``data``, ``data_setitem``,
``block_history``), without importing napari. Verified against napari 0.9.2:

* ``layer.data_setitem(indices, value)`` records ``(indices, old, new)`` and
  writes; outside ``block_history()`` each call is its own undo step.
* ``with layer.block_history():`` groups every ``data_setitem`` inside into one
  undo step, committed when the block exits normally. (If the block exits with
  an exception napari keeps the edits staged, so :class:`HistoryGroup` always
  exits it normally.)
* ``layer.undo()`` / ``layer.redo()`` replay a whole step.
* ``data_setitem`` casts ``value`` to the dtype of the layer: an id that does
  not fit raises ``OverflowError``, so :func:`write_masks` upcasts first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.labels import ensure_dtype, next_label_id, plan_objects, plan_write

__all__ = ["CommitResult", "HistoryGroup", "resolve_label_ids", "write_masks", "write_slice"]


class HistoryGroup:
    """Every edit of a Labels layer between :meth:`open` and :meth:`close` is one undo step.

    A ``with layer.block_history():`` block that always commits on exit (napari
    keeps the staged edits of a block left by an exception; they would join
    the next block). Also usable as :meth:`open` / :meth:`close`. Do not keep
    it open across GUI events: a paint stroke in between ends napari's group
    early (see :class:`~napari_sam.annotation.propagating.PropagationWriter`).
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._block: Any = None

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._block is not None

    def open(self) -> HistoryGroup:
        """Start grouping."""
        if self._block is None:
            self._block = self.layer.block_history()
            self._block.__enter__()
        return self

    def close(self) -> None:
        """Commit the grouped edits as one undo step (nothing if none)."""
        block, self._block = self._block, None
        if block is not None:
            block.__exit__(None, None, None)

    def __enter__(self) -> HistoryGroup:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class CommitResult:
    """What :func:`write_masks` did.

    Attributes
    ----------
    written : ids that got at least one pixel
    skipped : ids whose pixels all held other labels already (``overwrite=False``)
    upcast : ``(old_dtype, new_dtype)`` when the layer's data was converted, else None
    n_pixels : pixels written per id in ``written``
    """

    written: list[int]
    skipped: list[int]
    upcast: tuple[np.dtype, np.dtype] | None
    n_pixels: list[int]


def resolve_label_ids(label_id: Any, n_objects: int, labels: Any) -> list[int]:
    """The ids for ``n_objects`` new objects.

    ``None``: ``next_label_id(labels)``, + 1, ... ; an int: that id (only for
    one object); a sequence: one id per object.

    Raises
    ------
    ValueError
        Wrong number of ids, or ids < 1.
    """
    if label_id is None:
        first = next_label_id(labels)
        return list(range(first, first + n_objects))
    ids = [label_id] if np.isscalar(label_id) else list(label_id)
    try:
        ids = [int(i) for i in ids]
    except (TypeError, ValueError):
        raise ValueError(
            f"label_id must be an int or a sequence of ints, got {label_id!r}"
        ) from None
    if len(ids) != n_objects:
        hint = list(range(ids[0], ids[0] + n_objects)) if ids else [1]
        raise ValueError(
            f"label_id gives {len(ids)} id(s) for {n_objects} object(s); pass one id per "
            f"object (e.g. label_id={hint}) or None for new ids"
        )
    if min(ids) < 1:
        raise ValueError(f"label ids must be >= 1 (0 is background), got {ids}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"label ids must be distinct, got {ids}")
    return ids


def write_masks(
    layer: Any,
    masks: Sequence[np.ndarray],
    slice_index: tuple[int, ...],
    label_ids: Sequence[int],
    *,
    overwrite: bool = False,
) -> CommitResult:
    """Write ``(Y, X)`` masks into a Labels layer's slice as ONE undo step.

    Upcasts the layer's data first when the largest id does not fit its dtype
    (numpy/dask data; the undo history is kept). Overlaps between the masks go
    to the smaller object; existing labels are kept unless ``overwrite``.
    """
    upcast = None
    data = ensure_dtype(layer.data, max(label_ids))
    if data is not layer.data:
        upcast = (np.dtype(layer.data.dtype), np.dtype(data.dtype))
        layer.data = data
    edits = plan_objects(
        layer.data, list(masks), slice_index=slice_index, label_ids=list(label_ids),
        overwrite=overwrite,
    )
    with HistoryGroup(layer):
        for edit in edits:
            if edit.n_pixels:
                layer.data_setitem(edit.indices, edit.value)
    return CommitResult(
        written=[e.label_id for e in edits if e.n_pixels],
        skipped=[e.label_id for e in edits if not e.n_pixels],
        upcast=upcast,
        n_pixels=[e.n_pixels for e in edits if e.n_pixels],
    )


def write_slice(layer: Any, slice_index: tuple[int, ...], masks: dict[int, Any]) -> int:
    """Write ``{label_id: (Y, X) mask}`` into one slice, keeping every existing label.

    Each id only fills background pixels (``overwrite=False``); call it inside a
    :class:`HistoryGroup` to make many slices one undo step. Returns the
    number of pixels written.
    """
    total = 0
    for oid, mask in masks.items():
        edit = plan_write(
            layer.data, np.asarray(mask, dtype=bool), slice_index=slice_index, label_id=int(oid)
        )
        if edit.n_pixels:
            layer.data_setitem(edit.indices, edit.value)
            total += edit.n_pixels
    return total
