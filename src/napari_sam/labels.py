"""Write segmentation masks into label arrays without losing existing labels.

This module is free of Qt, napari and torch. It works on plain numpy arrays
and, for reading, on dask and zarr arrays (anything with ``shape``, ``dtype``
and basic-slicing ``__getitem__``); writes go to numpy or zarr arrays.

Conventions
-----------
* A label array ``labels`` has shape ``(*leading, Y, X)``: any number of
  leading non-spatial axes (``()`` for YX, ``(Z,)`` for ZYX, ``(T, Z)`` for
  TZYX) followed by the two axes of the 2D slice a mask belongs to. Its dtype
  is an integer dtype; ``0`` is background.
* A mask is a boolean array, either 2D ``(Y, X)`` for the slice selected by
  ``slice_index`` (one int per leading axis) or of the full ``labels.shape``
  when ``slice_index`` is None.
* An edit never touches pixels outside its mask. With ``overwrite=False``
  (the default) it only writes pixels that are currently ``0``, so labels the
  user already has are never changed.

The write is split in two steps so that it can be routed through napari's
undo history: :func:`plan_write` computes a :class:`LabelEdit` (reading only
the part of ``labels`` under the mask), and :func:`apply_edit` or napari's
``Labels.data_setitem`` performs it.

Using an edit with a napari ``Labels`` layer
--------------------------------------------
Verified against napari 0.9.2 (``napari/layers/labels/labels.py``)::

    from napari_sam.labels import ensure_dtype, plan_write

    new_data = ensure_dtype(layer.data, label_id)  # upcast if id does not fit
    if new_data is not layer.data:
        layer.data = new_data                      # undo history is kept
    edit = plan_write(layer.data, mask, slice_index=(z,), label_id=label_id)
    if edit.n_pixels:
        layer.data_setitem(edit.indices, edit.value)   # one undo step
    ...
    layer.undo()                                   # restores the old pixels

What napari does (0.9.2):

* ``data_setitem(indices, value)`` drops pixels that already hold ``value``,
  records ``(indices, old_values, value)`` as one history atom, writes
  ``layer.data[indices] = value`` in place (a numpy ``layer.data`` is the
  very array that was passed to ``Labels``) and refreshes the display.
  Calling it when nothing changes records nothing.
* Each call outside ``layer.block_history()`` is one undo step. To make
  several objects (e.g. from :func:`plan_objects`) a single undo step::

      with layer.block_history():
          for edit in edits:
              layer.data_setitem(edit.indices, edit.value)

* ``layer.undo()`` writes the recorded old values back (exactly what
  :attr:`LabelEdit.previous_values` holds); ``layer.redo()`` re-applies.
* ``value`` is cast with ``layer.data.dtype.type(value)``: an id that does not
  fit raises ``OverflowError`` before anything is written. Upcast first
  (:func:`ensure_dtype`). Assigning ``layer.data`` does not clear the undo
  history, and later undos write into the new array.
* ``data_setitem`` ignores ``layer.preserve_labels``; protecting existing
  labels is the job of ``overwrite=False`` here.
* A dask-backed layer cannot be edited (dask arrays are read-only).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "LabelEdit",
    "apply_edit",
    "ensure_dtype",
    "next_label_id",
    "plan_objects",
    "plan_write",
    "required_dtype",
    "revert_edit",
    "write_object",
    "write_objects",
]

#: Largest block (in bytes) read at once when scanning a non-numpy array.
_BLOCK_BYTES = 64 * 2**20

_UNSIGNED = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64))
_SIGNED = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64))


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _is_dask(array: Any) -> bool:
    return type(array).__module__.split(".")[0] == "dask"


def _read(array: Any, key: tuple) -> np.ndarray:
    """Read ``array[key]`` (basic indexing) into a numpy array."""
    out = array[key]
    if hasattr(out, "compute"):
        out = out.compute()
    return np.asarray(out)


def _labels_dtype(labels: Any) -> np.dtype:
    try:
        dtype = np.dtype(labels.dtype)
        labels.shape  # noqa: B018 - make sure it is array-like
    except (AttributeError, TypeError) as err:
        raise TypeError(
            f"labels must be an array with .shape and .dtype (numpy, dask or zarr); "
            f"got {type(labels).__name__}"
        ) from err
    if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
        raise TypeError(
            f"labels must have an integer dtype, got {dtype}; "
            f"convert it first, e.g. labels.astype(np.uint16)"
        )
    return dtype


def _as_int(value: Any, name: str) -> int:
    """Convert a Python/numpy integer to ``int``; reject bools and floats."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError as err:
        raise TypeError(f"{name} must be an integer, got {value!r}") from err


def _check_label_id(label_id: Any) -> int:
    label_id = _as_int(label_id, "label_id")
    if label_id <= 0:
        raise ValueError(
            f"label_id must be >= 1 (0 is background), got {label_id}; "
            f"pass label_id=None to use next_label_id(labels)"
        )
    return label_id


def _check_fits(dtype: np.dtype, label_id: int) -> None:
    info = np.iinfo(dtype)
    if not info.min <= label_id <= info.max:
        need = required_dtype(dtype, label_id)
        raise ValueError(
            f"label id {label_id} does not fit the labels dtype {dtype} "
            f"(max {info.max}); upcast first, e.g. labels = ensure_dtype(labels, "
            f"{label_id}) which converts to {need}"
        )


def _as_mask(mask: Any, name: str = "mask") -> np.ndarray:
    if _is_dask(mask):
        mask = mask.compute()
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(
            f"{name} must be a boolean array, got dtype {mask.dtype}; "
            f"pass e.g. {name} > 0 or {name}.astype(bool)"
        )
    return mask


def _resolve_slice(
    shape: tuple[int, ...], slice_index: Sequence[int] | None, mask_shape: tuple[int, ...]
) -> tuple[int, ...]:
    """Validate ``slice_index`` against ``shape`` and the mask shape.

    Returns the leading integer index (empty for a full-shape mask).
    """
    if len(shape) < 2:
        raise ValueError(f"labels must have at least 2 dimensions (Y, X), got shape {shape}")
    if slice_index is None:
        if tuple(mask_shape) != tuple(shape):
            hint = ""
            if len(mask_shape) == 2 and len(shape) > 2:
                hint = f"; for a 2D mask pass slice_index with {len(shape) - 2} int(s)"
            raise ValueError(
                f"mask shape {tuple(mask_shape)} does not match labels shape "
                f"{tuple(shape)} (slice_index=None needs a full-shape mask){hint}"
            )
        return ()
    if isinstance(slice_index, (int, np.integer)):
        raise TypeError(
            f"slice_index must be a tuple of ints, got {slice_index!r}; "
            f"write ({int(slice_index)},) for a single leading axis"
        )
    index = tuple(_as_int(s, "slice_index entry") for s in slice_index)
    n_lead = len(shape) - 2
    if len(index) != n_lead:
        raise ValueError(
            f"slice_index {index} has {len(index)} entries but labels of shape {shape} "
            f"have {n_lead} leading axis/axes before (Y, X); pass {n_lead} int(s)"
        )
    for axis, (i, size) in enumerate(zip(index, shape)):
        if not 0 <= i < size:
            raise IndexError(
                f"slice_index {index}: entry {i} for axis {axis} is out of range "
                f"[0, {size}) of labels shape {shape}"
            )
    if tuple(mask_shape) != tuple(shape[-2:]):
        raise ValueError(
            f"mask shape {tuple(mask_shape)} does not match the (Y, X) slice shape "
            f"{tuple(shape[-2:])} of labels shape {tuple(shape)}"
        )
    return index


# --------------------------------------------------------------------------
# ids and dtypes
# --------------------------------------------------------------------------


def next_label_id(labels: Any) -> int:
    """Return the smallest id larger than every id in ``labels``.

    Parameters
    ----------
    labels : array-like of int, any shape
        numpy, dask or zarr array (or any array with ``shape``, ``dtype``
        and basic-slicing ``__getitem__``). Non-numpy arrays are scanned
        block by block (dask: its own chunks; others: slabs along axis 0 of
        at most 64 MiB, aligned to ``labels.chunks``), never loaded whole.

    Returns
    -------
    int
        ``max(labels) + 1``, or ``1`` if ``labels`` is empty or holds no
        positive id. A Python int, so it may exceed the dtype's range (see
        :func:`required_dtype`).

    Raises
    ------
    TypeError
        If ``labels`` does not have an integer dtype.
    """
    dtype = _labels_dtype(labels)
    shape = tuple(labels.shape)
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return 1
    if isinstance(labels, np.ndarray):
        top = int(labels.max())
    elif _is_dask(labels):
        top = int(labels.max().compute())
    elif len(shape) == 0:
        top = int(np.asarray(labels[()]))
    else:
        plane_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
        step = max(1, _BLOCK_BYTES // plane_bytes)
        chunks = getattr(labels, "chunks", None)
        if chunks and isinstance(chunks[0], (int, np.integer)) and chunks[0] > 0:
            c0 = int(chunks[0])
            step = max(c0, step // c0 * c0)
        top = 0
        for start in range(0, shape[0], step):
            block = _read(labels, (slice(start, min(start + step, shape[0])),))
            top = max(top, int(block.max()))
    return max(top, 0) + 1


def required_dtype(labels_dtype: Any, label_id: int) -> np.dtype:
    """Return the dtype needed to store ``label_id`` in labels of ``labels_dtype``.

    Parameters
    ----------
    labels_dtype : dtype-like
        Integer dtype of the label array.
    label_id : int
        Id that must be representable.

    Returns
    -------
    numpy.dtype
        ``labels_dtype`` itself if ``label_id`` fits; otherwise the next
        larger dtype of the same kind that holds it: uint8 -> uint16 ->
        uint32 -> uint64 for unsigned, int8 -> int16 -> int32 -> int64 for
        signed dtypes.

    Raises
    ------
    TypeError
        If ``labels_dtype`` is not an integer dtype or ``label_id`` not an int.
    ValueError
        If no dtype of that kind can hold ``label_id`` (above uint64/int64, or
        negative for an unsigned dtype).
    """
    dtype = np.dtype(labels_dtype)
    if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
        raise TypeError(f"labels dtype must be an integer dtype, got {dtype}")
    label_id = _as_int(label_id, "label_id")
    info = np.iinfo(dtype)
    if info.min <= label_id <= info.max:
        return dtype
    ladder = _UNSIGNED if dtype.kind == "u" else _SIGNED
    for candidate in ladder:
        if candidate.itemsize <= dtype.itemsize:
            continue
        cinfo = np.iinfo(candidate)
        if cinfo.min <= label_id <= cinfo.max:
            return candidate
    raise ValueError(
        f"label id {label_id} cannot be stored in any {dtype.kind!r}-kind integer dtype "
        f"(labels dtype {dtype}, largest {ladder[-1]} holds "
        f"[{np.iinfo(ladder[-1]).min}, {np.iinfo(ladder[-1]).max}]); "
        f"relabel the array sequentially or use smaller ids"
    )


def ensure_dtype(labels: Any, label_id: int) -> Any:
    """Return ``labels`` in a dtype that can hold ``label_id``.

    Parameters
    ----------
    labels : numpy.ndarray or dask.array.Array of int
        Label array, any shape.
    label_id : int
        Id that must fit.

    Returns
    -------
    array
        ``labels`` itself (same object, no copy) when the id already fits;
        otherwise a new array of :func:`required_dtype` (numpy: a copy via
        ``astype``; dask: lazy ``astype``). Callers holding the array
        elsewhere (e.g. ``layer.data``) must store the returned object.

    Raises
    ------
    ValueError
        If an upcast is needed but ``labels`` is neither numpy nor dask
        (a zarr array's dtype cannot be changed in place), or no dtype fits.
    """
    dtype = _labels_dtype(labels)
    need = required_dtype(dtype, label_id)
    if need == dtype:
        return labels
    if isinstance(labels, np.ndarray) or _is_dask(labels):
        return labels.astype(need)
    raise ValueError(
        f"label id {label_id} needs dtype {need} but the {type(labels).__name__} "
        f"labels have dtype {dtype} and cannot be upcast in place; create a new "
        f"array with dtype {need} and copy the labels into it"
    )


# --------------------------------------------------------------------------
# edits
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LabelEdit:
    """A planned write of one id into a label array, and how to undo it.

    Attributes
    ----------
    indices : tuple of numpy.ndarray
        One 1D ``intp`` array per axis of the full label array (same order
        as ``labels.shape``), all of length ``n_pixels``: the pixels to write,
        in the form ``labels[indices] = value`` and napari's
        ``Labels.data_setitem(indices, value)`` take. Read-only.
    value : int
        Value written to every pixel in ``indices`` (equal to ``label_id``).
    label_id : int
        Id of the object, ``>= 1``.
    n_pixels : int
        Number of pixels written (0 for an empty edit).
    previous_values : numpy.ndarray
        Shape ``(n_pixels,)``, the labels' dtype: the values those pixels
        held when the edit was planned. ``labels[indices] = previous_values``
        reverts it (see :func:`revert_edit`). Read-only.
    n_skipped : int
        Mask pixels left unchanged: already holding another id with
        ``overwrite=False``, already holding ``label_id``, or claimed by
        another mask in :func:`plan_objects`.
    """

    indices: tuple[np.ndarray, ...]
    value: int
    label_id: int
    n_pixels: int
    previous_values: np.ndarray
    n_skipped: int = 0

    def __post_init__(self) -> None:
        indices = tuple(np.asarray(i, dtype=np.intp).reshape(-1) for i in self.indices)
        previous = np.asarray(self.previous_values).reshape(-1)
        for arr in (*indices, previous):
            if arr.size != self.n_pixels:
                raise ValueError(
                    f"LabelEdit: every index array and previous_values must have "
                    f"n_pixels={self.n_pixels} entries, got sizes "
                    f"{[a.size for a in indices]} and {previous.size}"
                )
        for arr in (*indices, previous):
            arr.setflags(write=False)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "previous_values", previous)

    @property
    def ndim(self) -> int:
        """Number of axes of the label array this edit addresses."""
        return len(self.indices)

    def bounding_box(self) -> tuple[slice, ...]:
        """Smallest box (one ``slice`` per axis) containing all edited pixels.

        Raises
        ------
        ValueError
            For an empty edit.
        """
        if self.n_pixels == 0:
            raise ValueError("empty LabelEdit (n_pixels == 0) has no bounding box")
        return tuple(slice(int(i.min()), int(i.max()) + 1) for i in self.indices)


def plan_write(
    labels: Any,
    mask: Any,
    *,
    slice_index: Sequence[int] | None = (),
    label_id: int | None = None,
    overwrite: bool = False,
) -> LabelEdit:
    """Plan writing ``mask`` into ``labels`` as one object, without writing.

    Parameters
    ----------
    labels : array of int, shape ``(*leading, Y, X)``
        Full label array: numpy, dask or zarr. Only the bounding box of the
        mask inside the selected slice is read (plus a full block-wise scan
        when ``label_id`` is None).
    mask : array of bool
        Shape ``(Y, X)`` for the slice ``slice_index``, or ``labels.shape``
        when ``slice_index`` is None.
    slice_index : tuple of int or None, default ()
        Index of the 2D slice along the leading axes, one non-negative int
        per leading axis: ``()`` for YX labels, ``(z,)`` for ZYX, ``(t, z)``
        for TZYX. None: ``mask`` covers the whole array.
    label_id : int, optional
        Id to write (``>= 1``). Default: :func:`next_label_id` of ``labels``
        (scans the whole array; pass an id to avoid that).
    overwrite : bool, default False
        False: only pixels that are currently 0 are written, existing labels
        are never changed. True: every mask pixel gets ``label_id``.

    Returns
    -------
    LabelEdit
        The pixels to write and their current values. ``n_pixels`` may be 0.

    Raises
    ------
    TypeError
        Non-integer labels, non-boolean mask, non-int ids or slice entries.
    ValueError
        Mask/labels shape mismatch, wrong number of slice entries,
        ``label_id < 1``, or an id that does not fit the labels' dtype
        (use :func:`ensure_dtype`).
    IndexError
        A slice entry out of range.
    """
    dtype = _labels_dtype(labels)
    shape = tuple(int(s) for s in labels.shape)
    mask = _as_mask(mask)
    prefix = _resolve_slice(shape, slice_index, mask.shape)
    label_id = next_label_id(labels) if label_id is None else _check_label_id(label_id)
    _check_fits(dtype, label_id)

    coords = np.nonzero(mask)
    n_mask = int(coords[0].size)
    if n_mask == 0:
        empty = tuple(np.empty(0, np.intp) for _ in shape)
        return LabelEdit(empty, label_id, label_id, 0, np.empty(0, dtype), 0)

    lo = [int(c.min()) for c in coords]
    hi = [int(c.max()) + 1 for c in coords]
    key = (*prefix, *(slice(a, b) for a, b in zip(lo, hi)))
    region = _read(labels, key)
    current = region[tuple(c - a for c, a in zip(coords, lo))]
    keep = current != label_id if overwrite else current == 0

    written = tuple(c[keep] for c in coords)
    n = int(written[0].size)
    indices = tuple(np.full(n, i, dtype=np.intp) for i in prefix) + written
    return LabelEdit(
        indices=indices,
        value=label_id,
        label_id=label_id,
        n_pixels=n,
        previous_values=current[keep].astype(dtype, copy=False),
        n_skipped=n_mask - n,
    )


def _check_edit_target(labels: Any, edit: LabelEdit) -> tuple[tuple[int, ...], np.dtype]:
    dtype = _labels_dtype(labels)
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
    if _is_dask(labels):
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
    region = np.array(_read(labels, box), copy=True)
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
        From :func:`plan_write` / :func:`plan_objects`.
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
    _check_fits(dtype, edit.value)
    _swap(labels, edit, edit.previous_values, edit.value, check, "apply edit")


def revert_edit(labels: Any, edit: LabelEdit, *, check: bool = True) -> None:
    """Undo an applied ``edit`` in place, restoring ``edit.previous_values``.

    Parameters
    ----------
    labels : numpy.ndarray or zarr.Array of int
        The array the edit was applied to.
    edit : LabelEdit
        The applied edit. Several edits are reverted in reverse order of
        application (edits from one :func:`plan_objects` call are disjoint,
        so any order works for them).
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
    """Write one mask into ``labels`` in place: :func:`plan_write` + :func:`apply_edit`.

    Parameters and errors are those of :func:`plan_write`; ``labels`` must be
    a writable numpy or zarr array whose dtype holds the id (see
    :func:`ensure_dtype`). Returns the applied :class:`LabelEdit`, which
    :func:`revert_edit` undoes.
    """
    edit = plan_write(labels, mask, slice_index=slice_index, label_id=label_id, overwrite=overwrite)
    apply_edit(labels, edit, check=False)
    return edit


def plan_objects(
    labels: Any,
    masks: Any,
    *,
    slice_index: Sequence[int] | None = (),
    label_ids: Sequence[int] | None = None,
    overwrite: bool = False,
    priority: Literal["smaller", "first"] = "smaller",
) -> list[LabelEdit]:
    """Plan writing several masks, each as its own new object.

    Overlap rule: a pixel covered by several masks of this call goes to one
    mask only, chosen by ``priority``:

    * ``"smaller"`` (default): the mask with the fewest pixels wins (ties:
      the earlier mask). A large object therefore never swallows a smaller
      one lying on or inside it, whatever the input order.
    * ``"first"``: the earlier mask in ``masks`` wins; later masks never
      overwrite earlier ones.

    Independently, ``overwrite`` decides what happens to labels already in
    ``labels`` (False: they are kept, as in :func:`plan_write`). The edits
    are disjoint, so they can be applied or reverted in any order, and
    together they form one undo step inside ``layer.block_history()``.

    Parameters
    ----------
    labels : array of int, shape ``(*leading, Y, X)``
        numpy, dask or zarr label array (read only where the masks are).
    masks : sequence of bool arrays, or bool array with a leading N axis
        N masks, each of shape ``(Y, X)`` (with ``slice_index``) or
        ``labels.shape`` (``slice_index=None``).
    slice_index : tuple of int or None, default ()
        As in :func:`plan_write`, shared by all masks.
    label_ids : sequence of int, optional
        One distinct id ``>= 1`` per mask. Default: consecutive ids starting
        at :func:`next_label_id`, in the order of ``masks`` (ids follow the
        input order, not the priority order).
    overwrite : bool, default False
        See :func:`plan_write`.
    priority : {"smaller", "first"}, default "smaller"
        Overlap rule between masks of this call, see above.

    Returns
    -------
    list of LabelEdit
        One per mask, in input order. A mask fully covered by existing
        labels or by higher-priority masks yields an empty edit (its id is
        still reserved).

    Raises
    ------
    ValueError, TypeError, IndexError
        As :func:`plan_write`; also for a wrong number of ``label_ids``,
        duplicate ids, masks of different shapes or an unknown ``priority``.
        Nothing is planned if any check fails.
    """
    if priority not in ("smaller", "first"):
        raise ValueError(f"priority must be 'smaller' or 'first', got {priority!r}")
    dtype = _labels_dtype(labels)
    mask_list = [_as_mask(m, f"masks[{k}]") for k, m in enumerate(masks)]
    if not mask_list:
        return []
    shapes = {m.shape for m in mask_list}
    if len(shapes) != 1:
        raise ValueError(f"all masks must have the same shape, got {sorted(shapes)}")
    n = len(mask_list)
    if label_ids is None:
        start = next_label_id(labels)
        ids = list(range(start, start + n))
    else:
        ids = [_check_label_id(i) for i in label_ids]
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} label_ids for {n} masks; pass one id per mask")
        if len(set(ids)) != n:
            raise ValueError(f"label_ids must be distinct, got {ids}")
    for i in ids:
        _check_fits(dtype, i)
    # validate the slice once before any work (plan_write re-checks cheaply)
    _resolve_slice(tuple(labels.shape), slice_index, mask_list[0].shape)

    if priority == "smaller":
        areas = np.array([np.count_nonzero(m) for m in mask_list])
        order = np.argsort(areas, kind="stable")
    else:
        order = np.arange(n)
    claimed = np.zeros(mask_list[0].shape, dtype=bool)
    own: list[np.ndarray] = [mask_list[0]] * n
    lost = [0] * n
    for k in order:
        m = mask_list[k]
        own[k] = m & ~claimed
        lost[k] = int(np.count_nonzero(m)) - int(np.count_nonzero(own[k]))
        claimed |= m

    edits = []
    for k in range(n):
        edit = plan_write(
            labels, own[k], slice_index=slice_index, label_id=ids[k], overwrite=overwrite
        )
        if lost[k]:
            edit = LabelEdit(
                edit.indices,
                edit.value,
                edit.label_id,
                edit.n_pixels,
                edit.previous_values,
                edit.n_skipped + lost[k],
            )
        edits.append(edit)
    return edits


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

    :func:`plan_objects` followed by :func:`apply_edit` for each edit; see
    :func:`plan_objects` for the parameters and the overlap rule. All edits
    are planned (and validated) before anything is written; if a write fails
    the edits already applied are reverted before the error propagates.

    Returns
    -------
    list of LabelEdit
        The applied edits, one per mask in input order.
    """
    edits = plan_objects(
        labels,
        masks,
        slice_index=slice_index,
        label_ids=label_ids,
        overwrite=overwrite,
        priority=priority,
    )
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
