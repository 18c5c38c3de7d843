"""Performing planned edits on plain arrays (numpy, zarr), and reverting them.

For label arrays outside napari (the command line, scripts). In napari the
Labels layer's own history is the undo (see
:class:`~napari_sam.labels.LayerWriter`); nothing here is used there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from napari_sam.labels._checks import check_fits, is_dask, labels_dtype, read
from napari_sam.labels.edits import LabelEdit, plan_objects, plan_write

__all__ = ["apply_edit", "revert_edit", "write_object", "write_objects"]


def _check_edit_target(labels: Any, edit: LabelEdit) -> tuple[tuple[int, ...], np.dtype]:
    dtype = labels_dtype(labels)
    shape = tuple(int(s) for s in labels.shape)
    if edit.ndim != len(shape):
        raise ValueError(
            f"edit addresses {edit.ndim} axes but labels have shape {shape}; "
            f"plan the edit against this array"
        )
    if edit.n_pixels:
        for axis, (idx, size) in enumerate(zip(edit.indices, shape)):
            if idx.min() < 0 or idx.max() >= size:
                raise ValueError(
                    f"edit indices on axis {axis} span [{idx.min()}, {idx.max()}] "
                    f"outside labels shape {shape}; plan the edit against this array"
                )
    if is_dask(labels):
        raise TypeError(
            "dask arrays are read-only; write into a numpy array (labels.compute()) "
            "or a zarr array instead"
        )
    return shape, dtype


def _swap(labels: Any, edit: LabelEdit, expected: Any, new: Any, check: bool, what: str) -> None:
    """Write ``new`` at ``edit.indices``, optionally checking they hold ``expected``."""
    if edit.n_pixels == 0:
        return
    if isinstance(labels, np.ndarray):
        if not labels.flags.writeable:
            raise ValueError(f"cannot {what}: labels array is read-only; pass a writable copy")
        if check:
            _check_current(labels[edit.indices], expected, what)
        labels[edit.indices] = new
        return
    # zarr and other array-likes: basic slicing only (read-modify-write of the box)
    box = edit.bounding_box()
    region = np.array(read(labels, box), copy=True)
    local = tuple(i - s.start for i, s in zip(edit.indices, box))
    if check:
        _check_current(region[local], expected, what)
    region[local] = new
    labels[box] = region


def _check_current(current: np.ndarray, expected: Any, what: str) -> None:
    bad = np.count_nonzero(current != expected)
    if bad:
        raise ValueError(
            f"cannot {what}: {bad} of {current.size} pixels no longer hold the values "
            f"the edit expects (labels changed since it was planned/applied); "
            f"plan the edit again, or pass check=False to force it"
        )


def apply_edit(labels: Any, edit: LabelEdit, *, check: bool = True) -> None:
    """Write ``edit`` into ``labels`` in place.

    Parameters
    ----------
    labels : numpy.ndarray or zarr.Array of int
        The label array the edit was planned for (same shape). numpy arrays
        are written with fancy indexing; other arrays with one
        read-modify-write of the edit's bounding box (basic slicing only, so
        a zarr array only rewrites the chunks under the edit).
    edit : LabelEdit
        From :func:`~napari_sam.labels.plan_write` / :func:`~napari_sam.labels.plan_objects`.
    check : bool, default True
        Verify first that the pixels still hold ``edit.previous_values``; if
        not (labels changed since planning), raise and write nothing.

    Raises
    ------
    ValueError
        Shape mismatch, id not fitting the dtype, a read-only array, or
        (with ``check``) stale edit.
    TypeError
        For dask arrays (read-only).
    """
    _, dtype = _check_edit_target(labels, edit)
    check_fits(dtype, edit.value)
    _swap(labels, edit, edit.previous_values, edit.value, check, "apply edit")


def revert_edit(labels: Any, edit: LabelEdit, *, check: bool = True) -> None:
    """Undo an applied ``edit`` in place, restoring ``edit.previous_values``.

    For arrays only (a napari Labels layer has its own undo history).

    Parameters
    ----------
    labels : numpy.ndarray or zarr.Array of int
        The array the edit was applied to.
    edit : LabelEdit
        The applied edit. Several edits are reverted in reverse order of
        application (edits from one :func:`~napari_sam.labels.plan_objects`
        call are disjoint, so any order works for them).
    check : bool, default True
        Verify first that the pixels still hold ``edit.value``; if not
        (they were edited since), raise and write nothing.

    Raises
    ------
    ValueError
        Shape mismatch, read-only array, or (with ``check``) pixels changed.
    TypeError
        For dask arrays (read-only).
    """
    _check_edit_target(labels, edit)
    _swap(labels, edit, edit.value, edit.previous_values, check, "revert edit")


def write_object(
    labels: Any,
    mask: Any,
    *,
    slice_index: Sequence[int] | None = (),
    label_id: int | None = None,
    overwrite: bool = False,
) -> LabelEdit:
    """Write one mask into ``labels`` in place: :func:`~napari_sam.labels.plan_write` +
    :func:`apply_edit`.

    Parameters and errors are those of ``plan_write``; ``labels`` must be a
    writable numpy or zarr array whose dtype holds the id (see
    :func:`~napari_sam.labels.ensure_dtype`). Returns the applied
    :class:`~napari_sam.labels.LabelEdit`, which :func:`revert_edit` undoes.
    """
    edit = plan_write(labels, mask, slice_index=slice_index, label_id=label_id, overwrite=overwrite)
    apply_edit(labels, edit, check=False)
    return edit


def write_objects(
    labels: Any,
    masks: Any,
    *,
    slice_index: Sequence[int] | None = (),
    label_ids: Sequence[int] | None = None,
    overwrite: bool = False,
    priority: Literal["smaller", "first"] = "smaller",
) -> list[LabelEdit]:
    """Write several masks into ``labels`` in place, each with its own id.

    :func:`~napari_sam.labels.plan_objects` followed by :func:`apply_edit`
    for each edit; see ``plan_objects`` for the parameters and the overlap
    rule. All edits are planned (and validated) before anything is written;
    if a write fails the edits already applied are reverted before the error
    propagates.

    Returns
    -------
    list of LabelEdit
        The applied edits, one per mask in input order.
    """
    edits = plan_objects(labels, masks, slice_index=slice_index, label_ids=label_ids,
                         overwrite=overwrite, priority=priority)
    done: list[LabelEdit] = []
    try:
        for edit in edits:
            apply_edit(labels, edit, check=False)
            done.append(edit)
    except BaseException:
        for edit in reversed(done):
            revert_edit(labels, edit, check=False)
        raise
    return edits
