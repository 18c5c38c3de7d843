"""The public functions: ``propagate_iter`` (a generator of per-slice updates) and
``propagate`` (runs to completion and writes the result into labels)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from napari_sam.propagation.engine import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_MAX_GROWTH,
    DEFAULT_MIN_AREA,
    DEFAULT_SCORE_THRESHOLD,
    Engine,
    cancel_requested,
)
from napari_sam.propagation.records import PropagationResult, SliceRecord, SliceUpdate


def propagate_iter(
    stack: Any,
    seeds: Any,
    predictor: Any,
    *,
    prompt_mode: str | None = None,
    direction: str = "both",
    z_range: Any = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    stop_markers: Any = None,
    contrast_limits: tuple[float, float] | None = None,
    embeddings: Any = None,
    min_area: int = DEFAULT_MIN_AREA,
    max_growth: float = DEFAULT_MAX_GROWTH,
    box_margin: float = 0.1,
    n_points: int = 3,
    fade_threshold: float | None = None,
    axis: Any = None,
    position: Any = None,
    motion: bool | None = None,
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
    predictor : PredictorProtocol
        :class:`napari_sam.predictor.Predictor` or a stand-in with ``embed``
        and ``predict`` (``predict_batch`` is used when present).
    prompt_mode : str
        How the mask on slice z prompts slice z ± 1: ``"box"``, ``"points"``,
        ``"mask"``, ``"neg"`` (negative points outside the mask) joined with
        ``+``; default (None): the model's recommendation in the registry
        (``"box+mask+neg"`` for the bundled ``micro``), else ``"box+mask"``
        (see docs/propagation.md).
    direction : {"both", "up", "down"}
        ``"up"`` propagates towards higher z, ``"down"`` towards lower z; gaps
        between keyframes are filled from both ends with ``"both"``, else from
        the end the direction allows.
    z_range : (start, stop) or slice, optional
        Only slices ``start <= z < stop`` (Python slice rules; None = stack end).
    iou_threshold : float
        Stop ("changed") when the IoU with the previous slice's mask is lower.
    score_threshold : float
        Stop ("low_score") when the model's predicted IoU is lower.
    stop_markers : dict, optional
        ``{object_id or None: iterable of z}``: slices the object must not
        reach (None: every object); a direction stops there ("stop_marker").
    contrast_limits : (float, float), optional
        Intensity range for every slice's embedding; default: ``(0, 255)``
        for uint8, else :func:`napari_sam.normalize.stack_intensity_range`,
        computed once.
    embeddings : mapping or callable, optional
        ``embeddings[z]`` or ``embeddings(z)`` -> the predictor's embedding of
        slice z (e.g. the annotator's cache); a ``KeyError`` or None falls
        back to ``predictor.embed``.
    min_area : int
        Stop ("vanished") when the mask has fewer pixels.
    max_growth : float
        Stop ("changed") when the mask's area exceeds this multiple of the
        previous slice's (masks that leak and diffuse towards the stack ends).
    box_margin : float
        Box prompts: bounding box grown by this fraction of its larger side
        (at least 2 px).
    n_points : int
        Positive points per prompt in the ``points`` modes.
    fade_threshold : float
        Stop ("faded") when the object's contrast (mean intensity in the mask
        minus the median of a 3-pixel ring around it) falls below this share
        of its contrast on the keyframe: out-of-focus light past the end of a
        nucleus (see :mod:`napari_sam.propagation.fade`). 0 turns it off.
        Default (None): the model's recommendation in the registry (0.4 for
        the bundled ``micro``), else 0 (off).
    axis : int or {"t", "z"}, optional
        The axis to propagate along: any non-displayed (leading) axis of the
        stack, as an index or a name: ``"t"`` the first leading axis, ``"z"``
        the one before Y (on a stack with one leading axis both name it).
        Objects keep their id along it, so ``axis="t"`` tracks objects
        through a time-lapse; a track ends by the stop rules (an exit or a
        division usually as ``"changed"`` or ``"vanished"``; there is no
        lineage). Default: the stack's first axis of a ``(Z, Y, X[, C])`` stack.
    position : sequence of int, optional
        The displayed slice's index along every leading axis (e.g. napari's
        ``dims.current_step[:n]``); the entry along ``axis`` is ignored.
        Required when the stack has more than one leading axis.
    motion : bool, optional
        Follow moving objects: each step's prompt (and the mask it is judged
        against) is the previous mask shifted by the object's last motion
        (the shift of its centre between its last two masks, kept while it
        touches the slice's edge). Default: on along a time axis, off in z.

    Along a time axis (``axis="t"``, or an index of a stack with several
    leading axes other than the one before Y) the defaults of
    ``prompt_mode`` and ``fade_threshold`` are ``"box+points+mask"`` and 0
    (off) instead of the model's recommendation for z
    (:data:`~napari_sam.propagation.engine.TRACKING_DEFAULTS`, measured in
    docs/propagation.md, "Tracking through time").
    ------
    SliceUpdate
        First one per keyframe slice (status ``"seed"``), then one per
        processed slice, in processing order (which interleaves directions and
        objects so that each slice is embedded once for all objects).

    Raises
    ------
    ValueError, TypeError
        Bad input (messages name the value and the fix).
    """
    engine = Engine.create(
        stack,
        seeds,
        predictor,
        prompt_mode=prompt_mode,
        direction=direction,
        z_range=z_range,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        stop_markers=stop_markers,
        contrast_limits=contrast_limits,
        embeddings=embeddings,
        min_area=min_area,
        max_growth=max_growth,
        box_margin=box_margin,
        n_points=n_points,
        fade_threshold=fade_threshold,
        axis=axis,
        position=position,
        motion=motion,
    )
    return _run(engine)


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
    **options
        Keyword options of :func:`~napari_sam.propagation.propagate_iter`.

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

    engine = Engine.create(stack, seeds, predictor, **options)
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
