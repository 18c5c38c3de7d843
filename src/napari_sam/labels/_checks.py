"""Validation of label arrays, masks, ids and slice indices (private; one pass per write).

Every public entry point of :mod:`napari_sam.labels` validates its inputs once
with these helpers and then works on the checked values only.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Largest block (in bytes) read at once when scanning a non-numpy array.
BLOCK_BYTES = 64 * 2**20

UNSIGNED = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64))
SIGNED = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64))


def is_dask(array: Any) -> bool:
    """True for a dask array (read-only for writes)."""
    return type(array).__module__.split(".")[0] == "dask"


def read(array: Any, key: tuple) -> np.ndarray:
    """Read ``array[key]`` (basic indexing) into a numpy array."""
    out = array[key]
    if hasattr(out, "compute"):
        out = out.compute()
    return np.asarray(out)


def labels_dtype(labels: Any) -> np.dtype:
    """The integer dtype of an array-like label array, or a ``TypeError`` saying what to do."""
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


def as_int(value: Any, name: str) -> int:
    """Convert a Python/numpy integer to ``int``; reject bools and floats."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError as err:
        raise TypeError(f"{name} must be an integer, got {value!r}") from err


def check_label_id(label_id: Any) -> int:
    """``label_id`` as an int ``>= 1``."""
    label_id = as_int(label_id, "label_id")
    if label_id <= 0:
        raise ValueError(
            f"label_id must be >= 1 (0 is background), got {label_id}; "
            f"pass label_id=None to use next_label_id(labels)"
        )
    return label_id


def check_fits(dtype: np.dtype, label_id: int) -> None:
    """Raise when ``label_id`` does not fit ``dtype``, naming the dtype to upcast to."""
    info = np.iinfo(dtype)
    if not info.min <= label_id <= info.max:
        from napari_sam.labels.ids import required_dtype

        need = required_dtype(dtype, label_id)
        raise ValueError(
            f"label id {label_id} does not fit the labels dtype {dtype} "
            f"(max {info.max}); upcast first, e.g. labels = ensure_dtype(labels, "
            f"{label_id}) which converts to {need}"
        )


def as_mask(mask: Any, name: str = "mask") -> np.ndarray:
    """A boolean numpy mask (dask computed), or a ``TypeError``."""
    if is_dask(mask):
        mask = mask.compute()
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(
            f"{name} must be a boolean array, got dtype {mask.dtype}; "
            f"pass e.g. {name} > 0 or {name}.astype(bool)"
        )
    return mask


def resolve_slice(
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
    index = tuple(as_int(s, "slice_index entry") for s in slice_index)
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
