"""Label ids and dtypes: the next free id, the dtype an id needs, ids for new objects."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam.labels import _checks
from napari_sam.labels._checks import SIGNED, UNSIGNED, as_int, is_dask, labels_dtype, read

__all__ = ["ensure_dtype", "next_label_id", "required_dtype", "resolve_label_ids"]


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
    dtype = labels_dtype(labels)
    shape = tuple(labels.shape)
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return 1
    if isinstance(labels, np.ndarray):
        top = int(labels.max())
    elif is_dask(labels):
        top = int(labels.max().compute())
    elif len(shape) == 0:
        top = int(np.asarray(labels[()]))
    else:
        plane_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
        step = max(1, _checks.BLOCK_BYTES // plane_bytes)
        chunks = getattr(labels, "chunks", None)
        if chunks and isinstance(chunks[0], (int, np.integer)) and chunks[0] > 0:
            c0 = int(chunks[0])
            step = max(c0, step // c0 * c0)
        top = 0
        for start in range(0, shape[0], step):
            block = read(labels, (slice(start, min(start + step, shape[0])),))
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
    label_id = as_int(label_id, "label_id")
    info = np.iinfo(dtype)
    if info.min <= label_id <= info.max:
        return dtype
    ladder = UNSIGNED if dtype.kind == "u" else SIGNED
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
    dtype = labels_dtype(labels)
    need = required_dtype(dtype, label_id)
    if need == dtype:
        return labels
    if isinstance(labels, np.ndarray) or is_dask(labels):
        return labels.astype(need)
    raise ValueError(
        f"label id {label_id} needs dtype {need} but the {type(labels).__name__} "
        f"labels have dtype {dtype} and cannot be upcast in place; create a new "
        f"array with dtype {need} and copy the labels into it"
    )


def resolve_label_ids(label_id: Any, n_objects: int, labels: Any) -> list[int]:
    """The ids of ``n_objects`` new objects, checked once.

    Parameters
    ----------
    label_id : None, int or sequence of int
        None: ``next_label_id(labels)``, + 1, ... (one scan of ``labels``);
        an int: that id (only for one object); a sequence: one id per object.
    n_objects : int
        Number of objects to write.
    labels : array of int
        The labels the objects go to (read only when ``label_id`` is None).

    Returns
    -------
    list of int
        ``n_objects`` distinct ids ``>= 1``.

    Raises
    ------
    ValueError
        Wrong number of ids, ids < 1, duplicates, or ids that are not ints.
    """
    if label_id is None:
        first = next_label_id(labels)
        return list(range(first, first + n_objects))
    given = [label_id] if np.isscalar(label_id) else list(label_id)
    try:
        ids = [as_int(i, "label_id") for i in given]  # 2.5 or "3" refused, never truncated
    except TypeError:
        raise ValueError(
            f"label_id must be an int or a sequence of ints, got {label_id!r}"
        ) from None
    if len(ids) != n_objects:
        hint = list(range(ids[0], ids[0] + n_objects)) if ids else [1]
        raise ValueError(
            f"label_id gives {len(ids)} id(s) for {n_objects} object(s); pass one id per "
            f"object (e.g. label_id={hint}) or None for new ids"
        )
    if min(ids, default=1) < 1:
        raise ValueError(f"label ids must be >= 1 (0 is background), got {ids}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"label ids must be distinct, got {ids}")
    return ids
