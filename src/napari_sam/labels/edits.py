"""Planning writes: which pixels a mask takes, as :class:`LabelEdit` records.

A plan reads only the part of the labels under the mask (its bounding box in
the selected slice) and writes nothing; :mod:`napari_sam.labels.writers`
performs plans (through napari's ``data_setitem`` or into an array).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from napari_sam.labels._checks import (
    as_mask,
    check_fits,
    check_label_id,
    labels_dtype,
    read,
    resolve_slice,
)
from napari_sam.labels.ids import next_label_id

__all__ = ["LabelEdit", "plan_objects", "plan_write"]


@dataclass(frozen=True, eq=False)
class LabelEdit:
    """A planned write of one id into a label array.

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
        held when the edit was planned (what an array write checks, and what
        :func:`~napari_sam.labels.revert_edit` restores). Read-only.
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


def plan_checked(
    labels: Any, mask: np.ndarray, prefix: tuple[int, ...], label_id: int, overwrite: bool,
    dtype: np.dtype,
) -> LabelEdit:
    """Plan one object from inputs that were validated already (no checks here).

    ``mask`` is a bool array of the slice (``prefix`` = its leading index) or
    of the whole array (``prefix == ()`` and ``mask.shape == labels.shape``).
    """
    coords = np.nonzero(mask)
    n_mask = int(coords[0].size)
    if n_mask == 0:
        empty = tuple(np.empty(0, np.intp) for _ in range(len(prefix) + mask.ndim))
        return LabelEdit(empty, label_id, label_id, 0, np.empty(0, dtype), 0)
    lo = [int(c.min()) for c in coords]
    hi = [int(c.max()) + 1 for c in coords]
    key = (*prefix, *(slice(a, b) for a, b in zip(lo, hi)))
    region = read(labels, key)
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
        (use :func:`~napari_sam.labels.ensure_dtype`).
    IndexError
        A slice entry out of range.
    """
    dtype = labels_dtype(labels)
    shape = tuple(int(s) for s in labels.shape)
    mask = as_mask(mask)
    prefix = resolve_slice(shape, slice_index, mask.shape)
    label_id = next_label_id(labels) if label_id is None else check_label_id(label_id)
    check_fits(dtype, label_id)
    return plan_checked(labels, mask, prefix, label_id, overwrite, dtype)


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
    are disjoint, so they can be performed in any order, and together they
    form one undo step of a :class:`~napari_sam.labels.LabelsWriter` group.
    Every input is validated once, before anything is read.

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
    dtype = labels_dtype(labels)
    mask_list = [as_mask(m, f"masks[{k}]") for k, m in enumerate(masks)]
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
        ids = [check_label_id(i) for i in label_ids]
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} label_ids for {n} masks; pass one id per mask")
        if len(set(ids)) != n:
            raise ValueError(f"label_ids must be distinct, got {ids}")
    for i in ids:
        check_fits(dtype, i)
    prefix = resolve_slice(tuple(int(s) for s in labels.shape), slice_index, mask_list[0].shape)

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
        edit = plan_checked(labels, own[k], prefix, ids[k], overwrite, dtype)
        if lost[k]:
            edit = LabelEdit(edit.indices, edit.value, edit.label_id, edit.n_pixels,
                             edit.previous_values, edit.n_skipped + lost[k])
        edits.append(edit)
    return edits
