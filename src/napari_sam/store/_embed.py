"""Embedding a whole stack into a store, slice by slice, resuming where it stopped."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.contract import as_predictor
from napari_sam.signature import image_signature, read_slice, slice_digest, slice_indices
from napari_sam.store._integrity import DamagedSliceError
from napari_sam.store._metadata import (
    StoreMetadata,
    StoreMismatchError,
    predictor_geometry,
    predictor_identity,
    predictor_tiling,
    tiling_of_grid,
)
from napari_sam.store._zarr import EmbeddingStore, done_value
from napari_sam.tiling import TiledEmbedding

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(slices_done, slices_total)``."""


def default_contrast_limits(stack: Any) -> tuple[float, float]:
    """One ``(low, high)`` for every slice: :func:`napari_sam.normalize.stack_contrast_limits`."""
    from napari_sam.normalize import stack_contrast_limits

    return stack_contrast_limits(stack)


def _check_stack(stack: Any, slice_axes: int) -> tuple[int, ...]:
    shape = getattr(stack, "shape", None)
    if shape is None or not hasattr(stack, "dtype"):
        raise TypeError(
            f"stack must be an array (numpy, dask or zarr) with .shape and .dtype, got "
            f"{type(stack).__name__}"
        )
    shape = tuple(int(s) for s in shape)
    if slice_axes not in (2, 3):
        raise ValueError(
            f"slice_axes must be 2 ((Y, X) slices) or 3 ((Y, X, C) colour slices), got "
            f"{slice_axes!r}"
        )
    if len(shape) < slice_axes:
        raise ValueError(f"stack of shape {shape} has fewer than {slice_axes} slice axes")
    if slice_axes == 3 and shape[-1] > 3:
        raise ValueError(
            f"the last axis has {shape[-1]} channels (shape {shape}); colour slices take at "
            "most 3. Choose the channels first, or use slice_axes=2 for grayscale slices"
        )
    return shape


def describe_stack(
    stack: Any,
    predictor: Any,
    *,
    contrast_limits: tuple[float, float] | None = None,
    slice_axes: int = 2,
    probe: bool = False,
    existing: StoreMetadata | None = None,
) -> tuple[dict, tuple | None]:
    """The store metadata fields for ``stack`` embedded by ``predictor``.

    Parameters
    ----------
    stack : ``(*lead, Y, X)`` or ``(*lead, Y, X, C)`` numpy, dask or zarr array
    predictor : object with ``embed`` and a ``model`` or ``fingerprint`` attribute
    contrast_limits : default: ``existing``'s, else :func:`default_contrast_limits`
    slice_axes : 2 or 3 trailing axes per slice
    probe : when the predictor cannot tell its geometry, embed the first slice
    existing : metadata of an existing store (supplies default contrast limits)

    Returns
    -------
    fields : dict
        :class:`StoreMetadata` keyword arguments. ``input_size`` and
        ``embedding_shape`` are left out when unknown (no probe). ``tiling`` is
        how the predictor embeds these slices (``predictor.plan_tiles``): None for
        whole slices, else ``{"tile", "overlap", "n_tiles"}``.
    probe : ``(index, embedding, slice digest)`` or None
        The probed slice's embedding (all tiles computed), to be written into a
        new store.
    """
    shape = _check_stack(stack, slice_axes)
    identity = predictor_identity(predictor)
    if contrast_limits is None:
        if existing is not None:
            contrast_limits = existing.contrast_limits
        else:
            contrast_limits = default_contrast_limits(stack)
    slice_shape = shape[len(shape) - slice_axes :]
    fields = {
        "stack_shape": shape,
        "slice_ndim": slice_axes,
        "model_name": identity.name,
        "model_fingerprint": identity.fingerprint,
        "precision": identity.precision,
        "contrast_limits": contrast_limits,
        "original_size": slice_shape[:2],
        "image_signature": image_signature(stack, slice_axes),
        "tiling": predictor_tiling(predictor, slice_shape),
    }
    geometry = predictor_geometry(predictor, slice_shape)
    probed = None
    if geometry is not None:
        fields["embedding_shape"], fields["input_size"] = geometry
    elif probe:
        index = next(slice_indices(shape, slice_axes))
        image = read_slice(stack, index)
        if fields["tiling"] is None:
            lifted = as_predictor(predictor, need_predict=False)
            emb = lifted.embed_untiled(image, contrast_limits=contrast_limits)
            whole = emb
        else:
            emb = predictor.embed(image, contrast_limits=contrast_limits)
            found = tiling_of_grid(emb.grid) if isinstance(emb, TiledEmbedding) else None
            if found != fields["tiling"]:
                raise ValueError(
                    f"{type(predictor).__name__}.plan_tiles announced tiling "
                    f"{fields['tiling']} for {slice_shape[:2]} slices, but embed gave {found}"
                )
            whole = emb.compute().overview()
        features = whole.features
        if hasattr(features, "detach"):
            features = features.detach().float().cpu().numpy()
        features = np.asarray(features)
        features = features[0] if features.ndim == 4 else features
        fields["embedding_shape"] = features.shape
        fields["input_size"] = tuple(whole.input_size)
        probed = (index, emb, slice_digest(image))
    return fields, probed


@dataclass(frozen=True)
class SliceEvent:
    """One step of :func:`iter_embed`.

    Attributes
    ----------
    index : the slice
    status : ``"computed"`` (embedded and stored now), ``"verified"`` (already
        stored; its pixels were checked against the stored digest and its features
        against their checksum) or ``"damaged"`` (stored, but its chunk is damaged:
        it counts as missing and is computed again)
    done : slices completely stored after this step
    total : slices in the stack
    """

    index: tuple[int, ...]
    status: str
    done: int
    total: int


@dataclass(frozen=True)
class EmbedReport:
    """What one embedding run did.

    Attributes
    ----------
    total : slices in the stack
    already_done : slices complete before the run
    computed : slices embedded by this run
    verified : complete slices re-read and checked against their digests and checksums
    missing : slices still not complete after the run (0 when finished)
    damaged : complete slices whose stored features were damaged (counted in
        ``already_done``, not in ``verified``): they were computed again
    """

    total: int
    already_done: int
    computed: int
    verified: int
    missing: int
    damaged: int = 0

    def summary(self) -> str:
        """One line for logs and the command line."""
        state = "complete" if self.missing == 0 else f"{self.missing} slice(s) still missing"
        checked = []
        if self.verified:
            checked.append(f"{self.verified} verified")
        if self.damaged:
            checked.append(f"{self.damaged} damaged, computed again")
        checked_text = f" ({', '.join(checked)})" if checked else ""
        return (
            f"{self.computed} slice(s) computed, {self.already_done} already done"
            f"{checked_text}, {self.total} in total: {state}"
        )


def _mismatch(store: EmbeddingStore, bad: list[tuple[int, ...]]) -> StoreMismatchError:
    shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
    return StoreMismatchError(
        store.path,
        [f"image: {len(bad)} stored slice(s) differ from the image's pixels: {shown}"],
    )


def iter_embed(
    store: EmbeddingStore,
    stack: Any,
    predictor: Any,
    *,
    verify: bool = True,
    indices: list[tuple[int, ...]] | None = None,
    max_slices: int | None = None,
    on_damage: Any = "warn",
) -> Generator[SliceEvent, None, None]:
    """Embed the missing slices of ``stack`` into ``store``, yielding after each slice.

    A generator: stop iterating to cancel; what is stored stays stored. One
    slice is in memory at a time.

    Parameters
    ----------
    store : opened writable :class:`EmbeddingStore` for this stack
    stack : the stack (numpy, dask or zarr), same shape as the store's
    predictor : the store's model (checked by its weights)
    verify : first re-read every complete slice: check its pixels against the
        stored digest (raise if any differ) and its features against their
        checksum (a damaged slice counts as missing: it is computed again, and
        reported once through ``on_damage``); cheap next to embedding
    indices : slices to compute (default: every missing one, in C order, after
        the verification)
    max_slices : compute at most this many of them (None: all)
    on_damage : ``"warn"``, ``"ignore"`` or ``callback(message)``, see
        :meth:`EmbeddingStore.get_or_compute`

    Raises
    ------
    StoreMismatchError
        Another model or image (shape, or pixels of stored slices with ``verify``).
    """
    shape = tuple(int(s) for s in stack.shape)
    if shape != store.metadata.stack_shape:
        raise StoreMismatchError(
            store.path, [f"image shape: store {store.metadata.stack_shape}, image {shape}"]
        )
    store.check_predictor(predictor)
    total = store.n_slices
    done = store.n_complete
    if verify:
        bad = []
        for index in store.completed():
            stored = store.stored_digest(index)
            if stored is not None and stored != done_value(slice_digest(read_slice(stack, index))):
                bad.append(index)
            try:
                store.read_features(index)  # checks the checksum; a damaged slice is cleared
            except DamagedSliceError as err:
                store.report_damaged(err, on_damage)
                done -= 1
                yield SliceEvent(index, "damaged", done, total)
                continue
            yield SliceEvent(index, "verified", done, total)
        if bad:
            raise _mismatch(store, bad)
    todo = store.missing() if indices is None else [store.normalize_index(i) for i in indices]
    if max_slices is not None:
        todo = todo[: max(0, int(max_slices))]
    for index in todo:
        if store.has(index):  # done meanwhile by another process
            continue
        image = read_slice(stack, index)
        emb = store.compute_embedding(image, predictor)
        store.check_embedding(emb)
        store.write(index, emb, image_digest=slice_digest(image))
        done += 1
        yield SliceEvent(index, "computed", done, total)


def embed_missing(
    store: EmbeddingStore,
    stack: Any,
    predictor: Any,
    *,
    verify: bool = True,
    max_slices: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    on_damage: Any = "warn",
) -> EmbedReport:
    """Run :func:`iter_embed` to the end (or ``max_slices`` computed, or ``cancel()`` true).

    ``progress(done, total)`` is called after each computed slice; ``cancel`` is
    polled before each slice. Damaged slices found by the verification are
    computed again (counted in ``EmbedReport.damaged``; ``on_damage`` as for
    :func:`iter_embed`).
    """
    total = store.n_slices
    already = store.n_complete
    counts = {"computed": 0, "verified": 0, "damaged": 0}
    if progress is not None:
        progress(already, total)
    events = iter_embed(
        store, stack, predictor, verify=verify, max_slices=max_slices, on_damage=on_damage
    )
    try:
        while not (cancel is not None and cancel()):
            event = next(events, None)
            if event is None:
                break
            counts[event.status] += 1
            if event.status == "computed" and progress is not None:
                progress(event.done, total)
    finally:
        events.close()
    return EmbedReport(
        total=total,
        already_done=already,
        computed=counts["computed"],
        verified=counts["verified"],
        missing=total - store.n_complete,
        damaged=counts["damaged"],
    )


def embed_stack(
    stack: Any,
    predictor: Any,
    store_path: str | os.PathLike,
    *,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    contrast_limits: tuple[float, float] | None = None,
    slice_axes: int = 2,
    dtype: str = "float16",
    verify: bool = True,
    overwrite: bool = False,
) -> EmbeddingStore:
    """Embed every slice of ``stack`` not yet in the store at ``store_path``.

    Opens the store if it exists (refusing one computed from another model,
    image or contrast limits) or creates it, then computes only the missing
    slices, one at a time, writing each as soon as it is computed: a stopped
    run resumes where it stopped.

    Parameters
    ----------
    stack : ``(*lead, Y, X)`` (or ``(*lead, Y, X, C)`` with ``slice_axes=3``) numpy,
        dask or zarr array; read one slice at a time
    predictor : :class:`~napari_sam.predictor.Predictor` (or a stand-in with ``embed``
        and a ``model`` or ``fingerprint`` attribute)
    store_path : the store directory (e.g. ``"stack.embeddings.zarr"``)
    progress : ``progress(done, total)`` after each computed slice
    cancel : polled before each slice; return True to stop (the store keeps what is done)
    contrast_limits : ``(low, high)`` for every slice; default: the store's, else
        :func:`default_contrast_limits`
    slice_axes : 2 for ``(Y, X)`` slices, 3 for ``(Y, X, C)`` colour slices
    dtype : storage dtype of a new store, ``"float16"`` or ``"float32"``
    verify : re-read stored slices and check their pixels first (see :func:`iter_embed`)
    overwrite : recompute everything into a new store

    Returns
    -------
    EmbeddingStore
        Opened read/write; ``store.missing()`` is empty unless cancelled.

    Raises
    ------
    StoreMismatchError
        The existing store was computed from something else (the message says what).
    StoreWriteError
        The store cannot be written (read-only place, full disk): an ``OSError``.
    """
    store = EmbeddingStore.for_stack(
        store_path,
        stack,
        predictor,
        contrast_limits=contrast_limits,
        slice_axes=slice_axes,
        dtype=dtype,
        overwrite=overwrite,
    )
    embed_missing(store, stack, predictor, verify=verify, progress=progress, cancel=cancel)
    return store


__all__ = [
    "EmbedReport",
    "SliceEvent",
    "default_contrast_limits",
    "describe_stack",
    "embed_missing",
    "embed_stack",
    "iter_embed",
]
