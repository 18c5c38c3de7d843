"""The public functions: ``propagate_iter`` (a generator of per-slice updates) and
``propagate`` (runs to completion and writes the result into labels)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from napari_sam.propagation.engine import Engine, cancel_requested
from napari_sam.propagation.params import PropagationParams
from napari_sam.propagation.records import PropagationResult, SliceRecord, SliceUpdate


def propagate_iter(
    stack: Any,
    seeds: Any,
    predictor: Any,
    params: PropagationParams | Mapping[str, Any] | None = None,
    **options: Any,
) -> Iterator[SliceUpdate]:
    """Propagate keyframe masks through a stack, yielding one update per processed slice.

    All inputs are checked when this function is called, before any slice is
    read; the predictor is never called without a prompt. Stopping the
    iteration early (``break``, ``close()``) is a valid way to cancel.

    Parameters
    ----------
    stack : array, shape ``(Z, Y, X)`` or ``(Z, Y, X, C)`` (C <= 3); with ``axis``
        any ``(..., Y, X)`` or ``(..., Y, X, C)`` stack, e.g. ``(T, Y, X)`` or
        ``(T, Z, Y, X)``
        numpy, dask or zarr; only the slices that are embedded are read
        (``np.asarray(stack[z])``), plus a sample for the contrast limits
        unless ``contrast_limits`` or ``embeddings`` cover everything.
        Every ``z`` below (seeds, ``z_range``, ``stop_markers``, records) is
        the index along the propagation axis.
    seeds : dict
        ``{z: (Y, X) bool mask}`` for one object (object id 1), or
        ``{object_id: {z: mask}}`` for several (object ids >= 1 are the label
        ids). An object may have several keyframes; a keyframe may also be a
        list of ``(z, mask)`` pairs.
    predictor : :class:`napari_sam.predictor.Predictor` or any predictor
        (:mod:`napari_sam.contract`; an object with ``embed`` and ``predict``
        is enough)
    params : :class:`~napari_sam.propagation.PropagationParams` or a mapping
        of its fields; default: its defaults
    **options : fields of :class:`~napari_sam.propagation.PropagationParams`,
        applied over ``params``, each documented there: ``prompt_mode``,
        ``direction``, ``z_range``, ``iou_threshold``, ``score_threshold``,
        ``min_area``, ``max_growth``, ``box_margin``, ``n_points``,
        ``fade_threshold``, ``motion``, ``axis``, ``position``,
        ``stop_markers``, ``contrast_limits``, ``embeddings``

    Yields
    ------
    SliceUpdate
        First one per keyframe slice (status ``"seed"``), then one per
        processed slice, in processing order (which interleaves directions and
        objects so that each slice is embedded once for all objects).

    Raises
    ------
    ValueError, TypeError
        Bad input (messages name the value and the fix); an unknown option
        (the message lists the valid ones).
    """
    return _run(Engine.create(stack, seeds, predictor, params, **options))


def _run(engine: Engine) -> Iterator[SliceUpdate]:
    while True:
        update = engine.step()
        if update is None:
            return
        yield update


def _labels_dtype(max_id: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _label_ids(engine: Engine, out: Any, label_id: Any) -> dict[int, int] | None:
    """object id -> label id to write; None for a bool mask result."""
    from napari_sam.propagation.inputs import as_index

    if engine.single:
        if label_id is None:
            if out is None:
                return None
            from napari_sam.labels import next_label_id

            return {oid: int(next_label_id(out)) for oid in engine.seeds}
        if isinstance(label_id, Mapping):
            raise TypeError("label_id must be one int for single-object seeds {z: mask}")
        lid = as_index(label_id, "label_id")
        if lid < 1:
            raise ValueError(f"label_id must be >= 1 (0 is background), got {lid}")
        return dict.fromkeys(engine.seeds, lid)
    if label_id is None:
        return {oid: oid for oid in engine.seeds}
    if not isinstance(label_id, Mapping):
        raise ValueError(
            f"label_id={label_id!r} is ambiguous with several objects: their object ids are "
            "written as labels; pass label_id={object_id: label} to map them"
        )
    mapping = {}
    for oid in engine.seeds:
        if oid not in label_id:
            raise ValueError(f"label_id mapping has no entry for object {oid}")
        lid = as_index(label_id[oid], f"label_id of object {oid}")
        if lid < 1:
            raise ValueError(f"label ids must be >= 1, got {lid} for object {oid}")
        mapping[oid] = lid
    return mapping


def _check_out(out: Any, engine: Engine, ids: dict[int, int] | None) -> bool:
    """Check ``out``; True when it has the whole nD stack's shape (not the axis')."""
    expected = (engine.info.n_slices, *engine.info.slice_shape)
    shape = tuple(int(s) for s in getattr(out, "shape", ()))
    whole = None
    if engine.source is not None:
        view = engine.stack
        whole = (*(int(s) for s in engine.source.shape[: len(view.position)]),
                 *engine.info.slice_shape)
    if shape != expected and shape != whole:
        also = "" if whole is None else f" or the whole stack's (..., Y, X) = {whole}"
        raise ValueError(
            f"out has shape {shape or type(out).__name__}, expected the stack's (Z, Y, X) "
            f"= {expected}{also}"
        )
    if type(out).__module__.split(".")[0] == "dask":
        raise TypeError("out is a dask array, which is read-only; pass a numpy or zarr array")
    dtype = np.dtype(out.dtype)
    if dtype.kind not in "iu":
        raise TypeError(f"out must have an integer (labels) dtype, got {dtype}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError("out is a read-only numpy array; pass a writable copy")
    top = max(ids.values()) if ids else 0
    if top > np.iinfo(dtype).max:
        raise ValueError(
            f"label id {top} does not fit out's dtype {dtype}; upcast first, e.g. "
            "napari_sam.labels.ensure_dtype(out, label_id)"
        )
    return shape == whole and shape != expected


def propagate(
    stack: Any,
    seeds: Any,
    predictor: Any,
    *,
    out: Any = None,
    label_id: Any = None,
    progress: Callable[[int, int], Any] | None = None,
    cancel: Any = None,
    params: PropagationParams | Mapping[str, Any] | None = None,
    **options: Any,
) -> PropagationResult:
    """Propagate keyframe masks through a stack and return the 3D result.

    Parameters
    ----------
    stack, seeds, predictor
        As for :func:`napari_sam.propagation.propagate_iter`.
    out : array of int, shape ``(Z, Y, X)``, optional
        numpy or zarr labels to write into, in place, slice by slice. Existing
        labels are preserved: a pixel is written only where ``out == 0`` (or
        where it already holds this object's label). With ``axis``: the shape
        along the axis ``(N, Y, X)``, or the whole stack's ``(..., Y, X)``
        (e.g. a ``(T, Z, Y, X)`` labels layer), written at ``position``.
    label_id : int or dict, optional
        Single object: the id to write (default: the next free id of ``out``,
        or a bool result when there is no ``out``). Several objects: their
        object ids are written, or ``{object_id: label}``.
    progress : callable ``(done, total)``, optional
        Called after every processed slice; ``total`` is an upper bound that
        shrinks as directions stop, and equals ``done`` at the end.
    cancel : threading.Event or zero-argument callable, optional
        Checked before every slice; when set, the run stops, what was written
        stays, and each unfinished direction gets a ``"cancelled"`` record.
    params, **options
        The options (:class:`~napari_sam.propagation.PropagationParams`), as for
        :func:`~napari_sam.propagation.propagate_iter`.

    Returns
    -------
    PropagationResult
        ``mask_or_labels`` is ``out`` or a new ``(Z, Y, X)`` array (along
        ``axis``: ``(N, Y, X)``; bool for a single object without
        ``label_id``, else labels); ``records``; ``cancelled``.

    Raises
    ------
    ValueError, TypeError
        Bad input, including an ``out`` of the wrong shape/dtype; nothing is
        written then.
    """
    from napari_sam.labels import write_object

    engine = Engine.create(stack, seeds, predictor, params, **options)
    ids = _label_ids(engine, out, label_id)
    full = False
    if out is not None:
        full = _check_out(out, engine, ids)
        result = out
    elif ids is None:
        result = np.zeros((engine.info.n_slices, *engine.info.slice_shape), dtype=bool)
    else:
        result = np.zeros(
            (engine.info.n_slices, *engine.info.slice_shape), dtype=_labels_dtype(max(ids.values()))
        )
    records: list[SliceRecord] = []
    cancelled = False
    while True:
        if cancel_requested(cancel):
            records.extend(engine.cancel_records())
            cancelled = True
            break
        update = engine.step()
        if update is None:
            break
        for oid, mask in update.masks.items():
            if ids is None:
                result[update.z] |= mask
            else:
                index = engine.slice_index(update.z, full)
                write_object(result, mask, slice_index=index, label_id=ids[oid])
        records.extend(update.records.values())
        if progress is not None:
            progress(engine.done, engine.total_estimate())
    return PropagationResult(result, records, cancelled)
