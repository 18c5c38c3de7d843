"""The computing side of :class:`~napari_sam.store.EmbeddingStore`: read, or compute and store.

:class:`StoreComputing` is a base class of ``EmbeddingStore`` (it uses the
store's ``metadata``, ``path``, ``grid``, reading and writing methods); it is
kept apart so that each module stays readable.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from napari_sam.contract import as_predictor
from napari_sam.signature import read_slice, slice_digest
from napari_sam.store._integrity import (
    DamagedSliceError,
    OnDamage,
    check_on_damage,
    damage_message,
    report_damage,
)
from napari_sam.store._layout import NO_DIGEST, done_value, read_metadata
from napari_sam.store._metadata import (
    StoreMetadata,
    StoreMismatchError,
    StoreWriteError,
    describe_tiling,
    predictor_identity,
    tiling_of_grid,
)
from napari_sam.tiling import TiledEmbedding

if TYPE_CHECKING:
    from napari_sam.store._zarr import EmbeddingStore
    from napari_sam.tiling import TileGrid


def _weakrefable(obj: Any) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


class StoreComputing:
    """``for_stack``, ``check_predictor``, ``get_or_compute``, ``compute_embedding``, ``bound``."""

    if TYPE_CHECKING:  # what EmbeddingStore (store/_zarr.py) gives its base
        path: Path
        metadata: StoreMetadata
        read_only: bool
        grid: TileGrid | None
        _checked_predictors: Any
        _damage_reported: bool

        def normalize_index(self, index: Any) -> tuple[int, ...]: ...
        def _flag(self, idx: tuple[int, ...]) -> int: ...
        def get(self, index: Any, device: Any = None) -> Any: ...
        def chunk_of(self, embedding: Any) -> np.ndarray: ...
        def write(self, index: Any, features: Any, *, image_digest: int | None = None
                  ) -> None: ...
        def _embedding(self, data: np.ndarray, idx: tuple[int, ...], device: Any) -> Any: ...

    # ------------------------------------------------------------ opening
    @classmethod
    def for_stack(
        cls,
        path: str | os.PathLike,
        stack: Any,
        predictor: Any,
        *,
        contrast_limits: tuple[float, float] | None = None,
        slice_axes: int = 2,
        dtype: str = "float16",
        overwrite: bool = False,
        mode: str = "r+",
    ) -> EmbeddingStore:
        """The store for ``stack`` embedded by ``predictor``: opened if it matches, else created.

        Parameters
        ----------
        path : store directory
        stack : ``(*lead, Y, X)`` (or ``(*lead, Y, X, C)``) numpy, dask or zarr array;
            only a few strided slices are read (for the image signature and, when
            no limits are given for a new store, the intensity range)
        predictor : a :class:`~napari_sam.predictor.Predictor` or any object with
            ``embed`` and a ``model`` or ``fingerprint`` attribute
        contrast_limits : ``(low, high)`` for every slice. Default: the existing
            store's limits, else ``(0, 255)`` for uint8 and a robust stack-wide range
            (:func:`napari_sam.normalize.stack_intensity_range`) otherwise
        slice_axes : 2 for ``(Y, X)`` slices, 3 for ``(Y, X, C)`` colour slices
        dtype : storage dtype of a new store
        overwrite : recompute: replace an existing store at ``path``
        mode : ``"r+"`` or ``"r"`` (an existing store only)

        Raises
        ------
        StoreMismatchError
            An existing store was computed from another model, image or contrast limits.
        StoreWriteError
            A new store cannot be written there (fall back to memory).
        """
        from napari_sam.store._embed import describe_stack

        path = Path(path)
        if path.exists() and not overwrite:
            expect, _ = describe_stack(
                stack,
                predictor,
                contrast_limits=contrast_limits,
                slice_axes=slice_axes,
                probe=False,
                existing=read_metadata(path),
            )
            store = cast("type[EmbeddingStore]", cls).open(path, expect, mode=mode)
        else:
            if mode == "r":
                raise FileNotFoundError(f"embedding store not found: {str(path)!r}")
            fields_, probe = describe_stack(
                stack,
                predictor,
                contrast_limits=contrast_limits,
                slice_axes=slice_axes,
                probe=True,
            )
            store = cast("type[EmbeddingStore]", cls).create_from(
                path, StoreMetadata(**fields_, dtype=dtype), overwrite=overwrite
            )
            if probe is not None:
                index, features, digest = probe
                store.write(index, features, image_digest=digest)
        if _weakrefable(predictor):
            store._checked_predictors.add(predictor)
        return store


    def check_embedding(self, embedding: Any) -> None:
        """Raise :class:`StoreMismatchError` if an Embedding's geometry or limits differ."""
        m = self.metadata
        problems = []
        for name, label in (("original_size", "slice size"), ("input_size", "model input size")):
            value = getattr(embedding, name, None)
            if value is not None and tuple(value) != tuple(getattr(m, name)):
                problems.append(f"{label}: store {getattr(m, name)}, embedding {tuple(value)}")
        limits = getattr(embedding, "contrast_limits", None)
        if (
            limits is not None
            and m.contrast_limits is not None
            and not np.allclose(limits, m.contrast_limits, rtol=1e-9, atol=0)
        ):
            problems.append(f"contrast limits: store {m.contrast_limits}, embedding {limits}")
        if problems:
            raise StoreMismatchError(self.path, problems, hint="Embed with the store's settings.")


    # ------------------------------------------------------------ damage
    def report_damaged(self, err: DamagedSliceError, on_damage: OnDamage = "warn") -> None:
        """Say once per store that damaged slices are being recomputed.

        Parameters
        ----------
        err : the first damaged slice found
        on_damage : ``"warn"`` (a :class:`~napari_sam.store.StoreDamageWarning`),
            ``"ignore"``, or ``callback(message)``; later damaged slices of this
            store are recomputed without a message (they are listed in
            :attr:`damaged`)
        """
        if self._damage_reported:
            return
        self._damage_reported = True
        report_damage(on_damage, damage_message(err, repaired=not self.read_only), stacklevel=4)

    # -------------------------------------------------------------- compute
    def check_predictor(self, predictor: Any) -> None:
        """Raise :class:`StoreMismatchError` unless ``predictor`` runs the store's model.

        The weights are hashed once per predictor object and store.
        """
        if _weakrefable(predictor) and predictor in self._checked_predictors:
            return
        identity = predictor_identity(predictor)
        if identity.fingerprint != self.metadata.model_fingerprint:
            raise StoreMismatchError(
                self.path,
                [
                    f"model: computed with {self.metadata.model_name!r} (weights "
                    f"{self.metadata.model_fingerprint}), not {identity.name!r} (weights "
                    f"{identity.fingerprint})"
                ],
            )
        if _weakrefable(predictor):
            self._checked_predictors.add(predictor)

    def get_or_compute(
        self,
        index: Any,
        image: Any,
        predictor: Any,
        *,
        verify: bool = True,
        on_write_error: str | Callable[[StoreWriteError], None] = "raise",
        on_damage: OnDamage = "warn",
    ) -> Any:
        """The embedding of one slice: read from the store, or computed and stored.

        A stored slice whose chunk is damaged (checksum mismatch, undecodable,
        see :mod:`napari_sam.store._integrity`) counts as not computed: it is
        recomputed and rewritten, and the first such slice of the store is
        reported through ``on_damage``.

        Parameters
        ----------
        index : slice index
        image : that slice, ``(Y, X)`` or ``(Y, X, C)`` (numpy, dask or zarr)
        predictor : the store's model (checked once, by its weights)
        verify : check the slice's pixels against the digest stored with its embedding
        on_write_error : ``"raise"``, ``"ignore"`` (return the computed embedding
            without storing it, e.g. on a full disk), or a callable
            ``on_write_error(err)`` called with the :class:`StoreWriteError` before
            the computed embedding is returned unstored (to report the failure once)
        on_damage : ``"warn"`` (default: a ``StoreDamageWarning``), ``"ignore"`` or
            ``callback(message)``, for the first damaged slice of this store

        Returns
        -------
        Embedding
            Features float32 on the predictor's ``device`` (else ``self.device``);
            freshly computed ones are rounded through the storage dtype, so they
            equal what a later read returns.

        Raises
        ------
        StoreMismatchError
            Another model, or the slice differs from the one stored (``verify``).
        """
        if not callable(on_write_error) and on_write_error not in ("raise", "ignore"):
            raise ValueError(
                "on_write_error must be 'raise', 'ignore' or a callable taking the "
                f"StoreWriteError, got {on_write_error!r}"
            )
        check_on_damage(on_damage)
        idx = self.normalize_index(index)
        image = read_slice(image, ())
        if image.shape != self.metadata.slice_shape:
            raise ValueError(
                f"slice {idx} has shape {image.shape}, but the store's slices are "
                f"{self.metadata.slice_shape}"
            )
        if verify:
            self.check_predictor(predictor)
        flag = self._flag(idx)
        device = as_predictor(predictor, need_predict=False).device
        digest = slice_digest(image) if (verify or flag == 0) else None
        if flag != 0:
            if verify and flag != NO_DIGEST and flag != done_value(digest):
                raise StoreMismatchError(
                    self.path,
                    [f"image: slice {idx} differs from the slice its stored embedding came from"],
                )
            try:
                return self.get(idx, device=device)
            except DamagedSliceError as err:
                self.report_damaged(err, on_damage)
                if digest is None:
                    digest = slice_digest(image)
        emb = self.compute_embedding(image, predictor)
        self.check_embedding(emb)
        data = self.chunk_of(emb)
        try:
            self.write(idx, data, image_digest=digest)
        except StoreWriteError as err:
            if callable(on_write_error):
                on_write_error(err)
            elif on_write_error == "raise":
                raise
        if self.grid is not None:  # rounded through the storage dtype, as a read returns
            return self._embedding(data.astype(self.metadata.dtype), idx, device)
        return self._rounded(emb, idx)

    def compute_embedding(self, image: Any, predictor: Any) -> Any:
        """Embed one slice as this store holds it, without storing it.

        Whole-slice stores get an untiled embedding (``tiling="off"``); tiled
        stores the predictor's :class:`~napari_sam.tiling.TiledEmbedding` with
        every tile and the overview computed (tiles batched). The store's
        contrast limits are used.

        Raises
        ------
        StoreMismatchError
            The predictor tiles the slice differently from the store.
        """
        m = self.metadata
        if m.tiling is None:
            whole = as_predictor(predictor, need_predict=False)
            return whole.embed_untiled(image, contrast_limits=m.contrast_limits)
        emb = predictor.embed(image, contrast_limits=m.contrast_limits)
        found = tiling_of_grid(emb.grid) if isinstance(emb, TiledEmbedding) else None
        if found != m.tiling:
            raise StoreMismatchError(
                self.path,
                [f"tiling: store {describe_tiling(m.tiling)}, this predictor "
                 f"{describe_tiling(found)}"],
                hint="Embed with the predictor settings (tiling, tile_overlap) the store was "
                "computed with, or recompute the store (overwrite=True).",
            )
        return emb.compute()

    def _rounded(self, emb: Any, idx: tuple[int, ...]) -> Any:
        """``emb`` with its features rounded through the storage dtype (as a read returns)."""
        import dataclasses

        features: Any = getattr(emb, "features", None)
        if not dataclasses.is_dataclass(emb) or isinstance(emb, type) or not hasattr(
            features, "to"
        ):
            return emb
        if self.metadata.dtype == "float16":
            import torch

            features = features.to(torch.float16).to(torch.float32)
        meta = {**getattr(emb, "metadata", {}), "store": str(self.path), "index": idx}
        return dataclasses.replace(emb, features=features, metadata=meta)

    def bound(self, stack: Any, predictor: Any, *, verify: bool = True) -> BoundEmbeddings:
        """Embeddings of any slice of ``stack``: stored ones read, missing ones computed and stored.

        Pass the result as the ``embeddings`` argument of propagation or
        "everything" functions: it supports ``emb[index]``, ``emb(index)`` and
        ``index in emb``. Damaged slices are recomputed (see :meth:`get_or_compute`).
        """
        from napari_sam.signature import image_signature

        if tuple(stack.shape) != self.metadata.stack_shape:
            raise StoreMismatchError(
                self.path,
                [f"image shape: store {self.metadata.stack_shape}, image {tuple(stack.shape)}"],
            )
        if verify:
            sig = image_signature(stack, self.metadata.slice_ndim)
            diffs = self.metadata.image_signature.differences(sig)
            if diffs:
                raise StoreMismatchError(self.path, [f"image: {d}" for d in diffs])
            self.check_predictor(predictor)
        return BoundEmbeddings(self, stack, predictor, verify)


class BoundEmbeddings:
    """An :class:`EmbeddingStore` tied to its stack and predictor (:meth:`EmbeddingStore.bound`).

    ``emb[index]`` and ``emb(index)`` return the slice's embedding, computing and
    storing it first when it is missing or damaged; ``index in emb`` says whether
    it is stored.
    """

    def __init__(self, store: Any, stack: Any, predictor: Any, verify: bool) -> None:
        self.store = store
        self.stack = stack
        self.predictor = predictor
        self.verify = verify

    def __getitem__(self, index: Any) -> Any:
        idx = self.store.normalize_index(index)
        if not self.verify and self.store.has(idx):
            try:
                return self.store.get(idx)
            except DamagedSliceError as err:
                self.store.report_damaged(err)
        return self.store.get_or_compute(
            idx, read_slice(self.stack, idx), self.predictor, verify=self.verify
        )

    def __call__(self, index: Any) -> Any:
        return self[index]

    def __contains__(self, index: Any) -> bool:
        return index in self.store

    def __repr__(self) -> str:
        return f"BoundEmbeddings({self.store!r})"


__all__ = ["BoundEmbeddings", "StoreComputing"]
