"""Checking and normalizing what :func:`~napari_sam.propagation.propagate_iter` gets.

Every check happens before any slice is read (beyond the stack's shape) and
before anything is written, so bad input never leaves partial results.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The object id used when ``seeds`` describes a single object (``{z: mask}``).
SINGLE_OBJECT_ID = 1

#: Valid values of ``direction``: ``"up"`` is towards higher z, ``"down"`` towards lower z.
DIRECTIONS = ("both", "up", "down")


@dataclass(frozen=True)
class StackInfo:
    """Geometry of the stack.

    Attributes
    ----------
    n_slices : int
        Z.
    slice_shape : (int, int)
        ``(Y, X)``.
    channels : int or None
        C for ``(Z, Y, X, C)`` stacks, None for ``(Z, Y, X)``.
    """

    n_slices: int
    slice_shape: tuple[int, int]
    channels: int | None


def check_stack(stack: Any) -> StackInfo:
    """Validate a ``(Z, Y, X)`` or ``(Z, Y, X, C)`` numpy/dask/zarr stack (shape only)."""
    shape = getattr(stack, "shape", None)
    if shape is None or not hasattr(stack, "__getitem__"):
        raise TypeError(
            f"stack must be an array (numpy, dask or zarr) of shape (Z, Y, X) or (Z, Y, X, C), "
            f"got {type(stack).__name__}"
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        raise ValueError(
            f"stack has shape {shape}: a single 2D image has nothing to propagate through. "
            "Pass a stack of shape (Z, Y, X) or (Z, Y, X, C); segment a single image with "
            "Predictor.predict instead"
        )
    if len(shape) not in (3, 4):
        raise ValueError(
            f"stack has shape {shape}; expected (Z, Y, X) or (Z, Y, X, C). For data with "
            "more axes (e.g. time) pass axis= and position= (or one 3D stack, e.g. stack[t])"
        )
    if len(shape) == 4 and not 1 <= shape[3] <= 3:
        raise ValueError(
            f"stack has shape {shape}, read as (Z, Y, X, C) with C={shape[3]} channels; SAM "
            "takes at most 3. Choose channels (e.g. stack[..., :3]) or, for (T, Z, Y, X) "
            "data, pass axis='t' or axis='z' and position=(t, z) of the displayed slice"
        )
    if min(shape) < 1:
        raise ValueError(f"stack has shape {shape}, which is empty")
    return StackInfo(shape[0], (shape[1], shape[2]), shape[3] if len(shape) == 4 else None)


#: Axis names of ``axis``: ``"t"`` is the first leading axis, ``"z"`` the last one
#: (the axis before Y); on a stack with one leading axis both name it.
AXIS_NAMES = ("t", "z")


def split_shape(shape: tuple[int, ...]) -> tuple[int, int | None]:
    """``(leading axes, channels)`` of an array shape with the slice axes ``(Y, X)`` or
    ``(Y, X, C)`` last: a last axis of 1-3 on an array of 4 or more axes is channels."""
    channels = shape[-1] if len(shape) >= 4 and 1 <= shape[-1] <= 3 else None
    return len(shape) - (3 if channels is not None else 2), channels


def resolve_axis(shape: tuple[int, ...], axis: Any) -> int:
    """The index of the propagation axis ``axis`` (a name of :data:`AXIS_NAMES` or an int)
    in an array of ``shape``; ``ValueError`` naming the fix for a 2D image, an axis that
    does not exist, or a displayed (Y, X) or channel axis."""
    n_lead, channels = split_shape(shape)
    layout = f"shape {shape}" + (" (..., Y, X, C)" if channels is not None else "")
    if n_lead < 1:
        raise ValueError(
            f"the image has {layout}: one 2D slice, with no axis to propagate or track "
            f"through (axis={axis!r}); pass a stack such as (Z, Y, X), (T, Y, X) or "
            "(T, Z, Y, X)"
        )
    leading = f"0..{n_lead - 1}" if n_lead > 1 else "0"
    if isinstance(axis, str):
        name = axis.strip().lower()
        if name not in AXIS_NAMES:
            raise ValueError(
                f"axis {axis!r} is not an axis name; use 't' (the first leading axis), 'z' "
                f"(the axis before Y) or an index {leading} for this {layout} stack"
            )
        return 0 if name == "t" else n_lead - 1
    index = as_index(axis, "axis")
    ndim = len(shape)
    if not -ndim <= index < ndim:
        raise ValueError(
            f"axis {index} does not exist in a stack of {layout} (axes 0..{ndim - 1}); "
            f"propagate along a leading axis {leading} ('t', 'z')"
        )
    index %= ndim
    if index >= n_lead:
        what = "the channel axis C" if channels is not None and index == ndim - 1 else (
            f"{'Y' if index == n_lead else 'X'}, one of the two displayed axes"
        )
        raise ValueError(
            f"axis {axis} is {what} of this {layout} stack; propagation runs along a "
            f"non-displayed axis: {leading} ('t', 'z')"
        )
    return index


def check_position(shape: tuple[int, ...], axis: int, position: Any) -> tuple[int, ...]:
    """The displayed slice's leading indices, one per leading axis (the entry at ``axis``
    is set to 0: it varies); None is allowed when ``axis`` is the only leading axis."""
    n_lead, _ = split_shape(shape)
    if position is None:
        if n_lead > 1:
            others = [i for i in range(n_lead) if i != axis]
            raise ValueError(
                f"this stack of shape {shape} has {n_lead} leading axes; pass position= "
                f"with one index per leading axis (the displayed slice, e.g. napari's "
                f"dims.current_step[:{n_lead}]) to fix axes {others} (the entry along "
                f"axis {axis} is ignored)"
            )
        return (0,) * n_lead
    try:
        values = list(position)
    except TypeError:
        values = [position]
    if len(values) != n_lead:
        raise ValueError(
            f"position={position!r} has {len(values)} entries; the stack of shape {shape} "
            f"has {n_lead} leading axes: give one index per leading axis"
        )
    out = []
    for i, v in enumerate(values):
        if i == axis:
            out.append(0)
            continue
        k = as_index(v, f"position[{i}]")
        if not 0 <= k < shape[i]:
            raise ValueError(
                f"position[{i}] = {k} is outside axis {i} of the stack (0..{shape[i] - 1})"
            )
        out.append(k)
    return tuple(out)


class AxisView:
    """The stack along one axis of an nD array, at fixed indices of the other leading axes.

    ``view[i]`` reads ``array[position with axis = i]`` (one ``(Y, X)`` or
    ``(Y, X, C)`` slice); a tuple key indexes into that slice further. Shape
    ``(N, Y, X)`` or ``(N, Y, X, C)``. Lazy: only the slices asked for are read.

    Attributes
    ----------
    array : the nD array (numpy, dask or zarr)
    axis : the propagation axis in ``array``
    position : the leading indices of the displayed slice (``position[axis]`` unused)
    time : whether the axis is time (see :func:`along_axis`)
    """

    def __init__(
        self, array: Any, axis: int, position: tuple[int, ...], time: bool = False
    ) -> None:
        self.array = array
        self.axis = int(axis)
        self.time = bool(time)
        self.position = tuple(int(p) for p in position)
        full = tuple(int(s) for s in array.shape)
        n_lead = len(self.position)
        self.shape = (full[self.axis], *full[n_lead:])
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def index(self, i: int) -> tuple[int, ...]:
        """The leading indices in :attr:`array` of slice ``i`` of the view."""
        lead = list(self.position)
        lead[self.axis] = int(i)
        return tuple(lead)

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        i = as_index(key, "slice index")
        if not -self.shape[0] <= i < self.shape[0]:
            raise IndexError(f"slice {i} is outside 0..{self.shape[0] - 1}")
        data = np.asarray(self.array[self.index(i % self.shape[0])])
        return data[rest] if rest else data

    def __repr__(self) -> str:
        return f"AxisView(shape={self.shape}, axis={self.axis}, position={self.position})"


def along_axis(stack: Any, axis: Any, position: Any) -> AxisView:
    """A lazy :class:`AxisView` of ``stack`` along ``axis`` (None: ``"z"``) at
    ``position``, all checked. The axis is *time* when it is named ``"t"``, or given
    as an index of a stack with several leading axes other than the last (z)."""
    shape = getattr(stack, "shape", None)
    if shape is None or not hasattr(stack, "__getitem__"):
        raise TypeError(
            f"stack must be an array (numpy, dask or zarr) with the slice axes (Y, X) last, "
            f"got {type(stack).__name__}"
        )
    shape = tuple(int(s) for s in shape)
    index = resolve_axis(shape, "z" if axis is None else axis)
    n_lead, _ = split_shape(shape)
    time = (isinstance(axis, str) and axis.strip().lower() == "t") or (
        not isinstance(axis, str) and axis is not None and n_lead > 1 and index != n_lead - 1
    )
    return AxisView(stack, index, check_position(shape, index, position), time)


def as_index(value: Any, what: str) -> int:
    """An integral number (int, numpy int or integral float) as a Python int."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be an integer slice index, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        return int(value)
    raise TypeError(f"{what} must be an integer slice index, got {value!r}")


def _is_mask_like(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _as_seed_mask(value: Any, oid: int, z: int, info: StackInfo, single: bool) -> np.ndarray:
    who = "the seed" if single else f"object {oid}'s seed"
    mask = np.asarray(value)
    if mask.shape != info.slice_shape:
        hint = ""
        if info.channels is None and mask.shape == (info.n_slices, info.slice_shape[0]):
            hint = (
                " (is the stack a single (Y, X, C) colour image? that has nothing to "
                "propagate through)"
            )
        raise ValueError(
            f"{who} on z={z} has shape {mask.shape}, but the stack's slices have shape "
            f"{info.slice_shape}{hint}; pass a (Y, X) mask of one slice"
        )
    if mask.dtype != np.bool_:
        if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
            values = np.unique(mask)[:6] if mask.dtype.kind in "biuf" else mask.dtype
            raise ValueError(
                f"{who} on z={z} has values {values} (dtype {mask.dtype}); pass a bool mask, "
                "e.g. labels[z] == label_id"
            )
        mask = mask.astype(bool)
    if not mask.any():
        raise ValueError(
            f"{who} on z={z} is empty (no True pixel); drop it or draw the object first"
        )
    return mask


def _pairs(value: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(value, Mapping):
        return value.items()
    return value


def normalize_seeds(seeds: Any, info: StackInfo) -> tuple[dict[int, dict[int, np.ndarray]], bool]:
    """``{z: mask}`` or ``{object_id: {z: mask}}`` -> ``({object_id: {z: mask}}, single)``.

    Each object's keyframes may also be a sequence of ``(z, mask)`` pairs; a z
    given twice must carry the same mask.
    """
    if not isinstance(seeds, Mapping):
        raise TypeError(
            "seeds must be a dict {z: (Y, X) bool mask} for one object or "
            f"{{object_id: {{z: mask}}}} for several, got {type(seeds).__name__}"
        )
    if not seeds:
        raise ValueError("seeds is empty: give at least one keyframe mask")
    kinds = {_is_mask_like(v) for v in seeds.values()}
    if kinds == {True, False}:
        raise ValueError(
            "seeds mixes masks and per-object keyframes; use either {z: mask} for one "
            "object or {object_id: {z: mask}} for several"
        )
    single = kinds == {True}
    raw = {SINGLE_OBJECT_ID: seeds} if single else seeds
    out: dict[int, dict[int, np.ndarray]] = {}
    for key, frames in raw.items():
        oid = as_index(key, "object id")
        if oid < 1:
            raise ValueError(f"object ids must be >= 1 (they are label ids), got {oid}")
        if oid in out:
            raise ValueError(f"object id {oid} is given twice in seeds")
        if not isinstance(frames, (Mapping, list, tuple)):
            raise TypeError(
                f"object {oid}'s keyframes must be a dict {{z: mask}} or a list of "
                f"(z, mask) pairs, got {type(frames).__name__}"
            )
        keyframes: dict[int, np.ndarray] = {}
        for item in _pairs(frames):
            try:
                zraw, value = item
            except (TypeError, ValueError) as err:
                raise TypeError(
                    f"object {oid}'s keyframes must be (z, mask) pairs, got {item!r}"
                ) from err
            z = as_index(zraw, f"seed slice of object {oid}")
            if not 0 <= z < info.n_slices:
                raise ValueError(
                    f"seed slice z={z} of object {oid} is outside the stack (slices "
                    f"0..{info.n_slices - 1}); use slice indices of this stack"
                )
            mask = _as_seed_mask(value, oid, z, info, single)
            if z in keyframes and not np.array_equal(keyframes[z], mask):
                raise ValueError(
                    f"object {oid} has two different seed masks on z={z}; give one mask per "
                    "slice (merge them first, e.g. with np.logical_or)"
                )
            keyframes[z] = mask
        if not keyframes:
            raise ValueError(f"object {oid} has no keyframes")
        out[oid] = dict(sorted(keyframes.items()))
    return out, single


def normalize_z_range(z_range: Any, n_slices: int) -> tuple[int, int]:
    """``(start, stop)`` / ``slice(start, stop)`` / None -> inclusive ``(first, last)``.

    Python slice semantics: ``start <= z < stop``; None or a missing end means
    the stack's end; negative values count from the end as in Python.
    """
    if z_range is None:
        return 0, n_slices - 1
    if isinstance(z_range, slice):
        if z_range.step not in (None, 1):
            raise ValueError(f"z_range must not have a step, got {z_range}")
        start, stop = z_range.start, z_range.stop
    else:
        try:
            start, stop = z_range
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"z_range must be (start, stop) or slice(start, stop), got {z_range!r}"
            ) from err
    start = None if start is None else as_index(start, "z_range start")
    stop = None if stop is None else as_index(stop, "z_range stop")
    first, last_excl, _ = slice(start, stop).indices(n_slices)
    if last_excl <= first:
        raise ValueError(
            f"z_range {z_range!r} selects no slice of a stack with {n_slices} slices "
            "(it is start <= z < stop)"
        )
    return first, last_excl - 1


def normalize_stop_markers(
    stop_markers: Any, object_ids: Iterable[int], info: StackInfo
) -> dict[int, frozenset[int]]:
    """``{object_id or None: iterable of z}`` (or a plain iterable of z for every
    object) -> ``{object_id: frozenset of z}`` for the given objects."""
    ids = list(object_ids)
    result: dict[int, set[int]] = {oid: set() for oid in ids}
    if stop_markers is None:
        return {oid: frozenset() for oid in ids}
    if isinstance(stop_markers, Mapping):
        items = list(stop_markers.items())
    elif isinstance(stop_markers, (str, bytes)) or not isinstance(stop_markers, Iterable):
        raise TypeError(
            "stop_markers must be {object_id or None: iterable of z} or an iterable of z, "
            f"got {stop_markers!r}"
        )
    else:
        items = [(None, list(stop_markers))]
    for key, zs in items:
        if key is None:
            targets = ids
        else:
            oid = as_index(key, "stop_markers object id")
            if oid not in result:
                raise ValueError(
                    f"stop_markers names object {oid}, which has no seeds (objects: {ids})"
                )
            targets = [oid]
        if isinstance(zs, (int, np.integer)):
            zs = [zs]
        for zraw in zs:
            z = as_index(zraw, "stop marker slice")
            if not 0 <= z < info.n_slices:
                raise ValueError(
                    f"stop marker z={z} is outside the stack (slices 0..{info.n_slices - 1})"
                )
            for oid in targets:
                result[oid].add(z)
    return {oid: frozenset(zs) for oid, zs in result.items()}


def check_thresholds(
    iou_threshold: float, score_threshold: float, min_area: int, max_growth: float
) -> None:
    """Range checks of the stop-rule options."""
    for name, value in (("iou_threshold", iou_threshold), ("score_threshold", score_threshold)):
        if not (isinstance(value, (int, float, np.number)) and 0.0 <= float(value) <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not isinstance(min_area, (int, np.integer)) or isinstance(min_area, bool) or min_area < 1:
        raise ValueError(f"min_area must be an integer >= 1 (pixels), got {min_area!r}")
    if not (isinstance(max_growth, (int, float, np.number)) and float(max_growth) >= 1.0):
        raise ValueError(
            f"max_growth must be a number >= 1 (allowed area ratio between neighbouring "
            f"slices; use math.inf to disable), got {max_growth!r}"
        )
