"""The on-disk embedding store: one zarr chunk per slice, a completion flag per slice.

The layout is described in :mod:`napari_sam.store._layout`.

The ``done`` chunk of a slice is written after its features, so a process
killed in the middle of a write leaves that slice "not complete" and it is
recomputed later: a half-written slice is never returned. Its flag is the
slice's :func:`~napari_sam.signature.slice_digest` (mapped away from 0 and 1),
or 1 when the embedding was stored without its image; a slice read again is
checked against it. From version 3 on the same chunk holds the CRC-32 of the
stored features, checked on every read: a damaged chunk counts as not
computed (:mod:`napari_sam.store._integrity`). Each flag is its own chunk file,
so processes writing different slices never touch the same file.
"""

from __future__ import annotations

import os
import shutil
import uuid
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from napari_sam.signature import slice_indices
from napari_sam.store._compute import BoundEmbeddings, StoreComputing
from napari_sam.store._integrity import (
    CHECKSUM_VERSION,
    DamagedSliceError,
    chunk_problem,
    features_checksum,
)
from napari_sam.store._layout import (
    ATTRS_KEY,
    NO_DIGEST,
    chunk_of_embedding,
    create_array,
    done_value,
    embedding_of_chunk,
    read_metadata,
    zarr_module,
)
from napari_sam.store._metadata import (
    STORE_VERSION,
    NotAStoreError,
    StoreMetadata,
    StoreMismatchError,
    StoreWriteError,
)
from napari_sam.tiling import TileGrid

__all__ = ["ATTRS_KEY", "NO_DIGEST", "BoundEmbeddings", "EmbeddingStore", "done_value"]


class EmbeddingStore(StoreComputing):
    """Slice embeddings of one stack on disk, computed once and reused.

    Create with :meth:`create`, :meth:`open` or :meth:`for_stack` (open if
    present and matching, else create), never with the constructor.

    Indices are tuples of the leading (non-spatial) indices of the stack:
    ``(z,)`` for ``(Z, Y, X)``, ``(t, z)`` for ``(T, Z, Y, X)``, ``()`` for one
    2D image; an int is accepted for a single leading axis, negative indices
    count from the end.

    * ``store[index]`` / ``store(index)`` -> :class:`~napari_sam.predictor.Embedding`,
      or for a tiled store (``metadata.tiling``) a
      :class:`~napari_sam.tiling.TiledEmbedding` with every tile and the overview
      filled (reads only that slice's chunk; ``KeyError`` if it is not complete)
    * ``store[index] = embedding`` stores one slice
    * ``index in store`` / :meth:`has`, :meth:`missing`, :meth:`completed`
    * :meth:`get_or_compute` reads or computes-and-stores; :meth:`bound` gives
      an object that does this for any slice of a stack, for functions that
      take ``embeddings``.

    Attributes
    ----------
    path : the store directory
    metadata : :class:`StoreMetadata`
    read_only : True when opened with ``mode="r"``
    device : torch device of the features returned by ``store[index]`` (default ``"cpu"``)
    """

    def __init__(self, path: Path, metadata: StoreMetadata, group: Any, read_only: bool) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self.read_only = read_only
        self.device = "cpu"
        self._features = group["features"]
        self._done = group["done"]
        self._checked_predictors: Any = weakref.WeakSet()
        #: whether each slice's ``done`` chunk holds the checksum of its features
        self.checksums = int(metadata.version or STORE_VERSION) >= CHECKSUM_VERSION
        #: slices found damaged by this object (they were then treated as not computed)
        self.damaged: list[tuple[int, ...]] = []
        self._damage_reported = False
        n_lead = len(metadata.lead_shape or (1,))
        if self._done.ndim != n_lead + self.checksums:
            raise NotAStoreError(
                f"{str(path)!r} has inconsistent metadata: version {metadata.version} but a "
                f"{self._done.ndim}-D completion array for {n_lead} leading axis(es); recompute "
                "the store (napari-sam embed --overwrite)"
            )
        self.grid: TileGrid | None = None
        if metadata.tiling is not None:
            t = metadata.tiling
            h, w = metadata.original_size
            grid = TileGrid((int(h), int(w)), t["tile"], t["overlap"])
            if len(grid) != t["n_tiles"]:
                raise NotAStoreError(
                    f"{str(path)!r} has inconsistent metadata: tiling {t} gives {len(grid)} "
                    f"tiles for {metadata.original_size} slices; recompute the store"
                )
            self.grid = grid

    # ------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        stack_shape: tuple[int, ...],
        model_name: str,
        model_fingerprint: str,
        contrast_limits: tuple[float, float] | None,
        input_size: tuple[int, int],
        embedding_shape: tuple[int, int, int],
        image_signature: Any,
        slice_axes: int = 2,
        tiling: dict | None = None,
        precision: str | None = None,
        dtype: str = "float16",
        overwrite: bool = False,
    ) -> EmbeddingStore:
        """Create an empty store at ``path`` (every slice missing).

        Parameters
        ----------
        path : the store directory to create (conventionally ``*.zarr``)
        stack_shape : shape of the stack ``(*lead, Y, X)`` (or ``(*lead, Y, X, C)``)
        model_name, model_fingerprint : see :func:`predictor_identity`
        contrast_limits : ``(low, high)`` used for every slice
        input_size : ``Embedding.input_size`` ``(h, w)``
        embedding_shape : ``(C, e, e)`` of ``Embedding.features[0]`` (of one tile
            and of the overview for tiled slices)
        image_signature : :func:`~napari_sam.signature.image_signature` of the stack
        slice_axes : number of trailing axes forming one slice: 2 ``(Y, X)``
            or 3 ``(Y, X, C)``
        tiling : None (whole slices) or ``{"tile", "overlap", "n_tiles"}``
            (``TiledEmbedding.metadata["tiling"]``): each slice then stores its
            ``n_tiles`` tiles and its overview
        precision : informational
        dtype : ``"float16"`` (half the disk, ~1e-3 relative rounding) or ``"float32"``
        overwrite : replace an existing embedding store at ``path``

        Raises
        ------
        FileExistsError
            ``path`` exists (and ``overwrite`` is False).
        NotAStoreError
            ``overwrite`` was asked but ``path`` is not an embedding store
            (it is never deleted).
        StoreWriteError
            The place is not writable or the disk is full.
        """
        stack_shape = tuple(int(s) for s in stack_shape)
        slice_ndim = int(slice_axes)
        metadata = StoreMetadata(
            stack_shape=stack_shape,
            slice_ndim=slice_ndim,
            model_name=str(model_name),
            model_fingerprint=str(model_fingerprint),
            contrast_limits=contrast_limits,
            original_size=cast("tuple[int, int]", stack_shape[len(stack_shape) - slice_ndim :][:2]),
            input_size=input_size,
            embedding_shape=embedding_shape,
            image_signature=image_signature,
            tiling=tiling,
            precision=precision,
            dtype=dtype,
        )
        return cls.create_from(path, metadata, overwrite=overwrite)

    @classmethod
    def create_from(
        cls, path: str | os.PathLike, metadata: StoreMetadata, *, overwrite: bool = False
    ) -> EmbeddingStore:
        """Create an empty store described by ``metadata`` (see :meth:`create`).

        The store is built in a temporary sibling directory and renamed into
        place, so a crash never leaves a store without metadata.
        """
        path = Path(path)
        metadata = metadata.with_updates(version=STORE_VERSION)  # always the current layout
        if path.exists():
            if not overwrite:
                raise FileExistsError(
                    f"{str(path)!r} already exists; open it with EmbeddingStore.open, or pass "
                    "overwrite=True to replace it"
                )
            read_metadata(path)  # raises NotAStoreError: never delete other data
            try:
                shutil.rmtree(path)
            except OSError as err:
                raise StoreWriteError(path, f"could not remove the old store ({err})", err) from err
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
        zarr = zarr_module()
        lead = metadata.lead_shape or (1,)
        ones = (1,) * len(lead)
        try:
            if not path.parent.exists():
                path.parent.mkdir(parents=True)
            group = zarr.open_group(str(tmp), mode="w")
            create_array(
                group,
                "features",
                shape=(*lead, *metadata.chunk_shape),
                chunks=(*ones, *metadata.chunk_shape),
                dtype=metadata.dtype,
                fill_value=0,
            )
            create_array(  # (flag, checksum) per slice, in one chunk
                group, "done", shape=(*lead, 2), chunks=(*ones, 2), dtype="uint64", fill_value=0
            )
            group.attrs.update({ATTRS_KEY: metadata.to_dict()})
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreWriteError(path, f"{type(err).__name__}: {err}", err) from err
        try:
            os.rename(tmp, path)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if path.exists():
                raise FileExistsError(
                    f"{str(path)!r} was created by another process at the same time; open it"
                ) from err
            raise StoreWriteError(path, f"{type(err).__name__}: {err}", err) from err
        return cls.open(path)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        expect: StoreMetadata | Mapping[str, Any] | None = None,
        *,
        mode: str = "r+",
    ) -> EmbeddingStore:
        """Open an existing store, refusing it if it does not match ``expect``.

        Parameters
        ----------
        path : the store directory
        expect : a full :class:`StoreMetadata` or a mapping of some of its fields
            (e.g. ``{"model_fingerprint": ..., "contrast_limits": ...}``) that must match
        mode : ``"r+"`` read and write, ``"r"`` read only

        Raises
        ------
        FileNotFoundError
            Nothing at ``path``.
        NotAStoreError
            ``path`` is not an embedding store.
        StoreMismatchError
            The store was computed from something else; the message lists what differs.
        StoreWriteError
            ``mode="r+"`` on a store that is not writable (open with ``mode="r"``).
        """
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' (read only) or 'r+' (read/write), got {mode!r}")
        path = Path(path)
        metadata = read_metadata(path)
        if expect is not None:
            differences = metadata.differences(expect)
            if differences:
                raise StoreMismatchError(path, differences)
        if mode == "r+" and not os.access(path, os.W_OK):
            raise StoreWriteError(
                path, "the directory is not writable (open it with mode='r' to only read)"
            )
        group = zarr_module().open_group(str(path), mode=mode)
        return cls(path, metadata, group, read_only=mode == "r")

    # ------------------------------------------------------------------ shape
    @property
    def n_slices(self) -> int:
        """Number of slices of the stack."""
        return self.metadata.n_slices

    @property
    def lead_shape(self) -> tuple[int, ...]:
        """Shape of the index space (``()`` for a 2D image)."""
        return self.metadata.lead_shape

    def indices(self) -> Iterator[tuple[int, ...]]:
        """Every slice index, in C order."""
        return slice_indices(self.metadata.stack_shape, self.metadata.slice_ndim)

    def normalize_index(self, index: Any) -> tuple[int, ...]:
        """``index`` as a tuple of non-negative ints; an int is accepted for one leading axis.

        Raises
        ------
        IndexError
            Wrong number of indices or out of range.
        """
        lead = self.lead_shape
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            index = (index,)
        try:
            if isinstance(index, (str, bytes)):
                raise TypeError(index)
            idx = tuple(int(i) for i in index)
        except (TypeError, ValueError) as err:
            raise IndexError(
                f"slice index must be a tuple of {len(lead)} int(s) for the leading axes "
                f"{lead} of the stack, got {index!r}"
            ) from err
        if len(idx) != len(lead):
            raise IndexError(
                f"slice index {index!r} has {len(idx)} entries; the stack has {len(lead)} "
                f"leading axes (shape {lead}), e.g. {tuple(0 for _ in lead)}"
            )
        out = []
        for i, n in zip(idx, lead):
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise IndexError(f"slice index {index!r} is out of range for leading shape {lead}")
            out.append(j)
        return tuple(out)

    def _key(self, idx: tuple[int, ...]) -> tuple[int, ...]:
        return idx if idx else (0,)

    # ------------------------------------------------------------- completion
    def _state(self, idx: tuple[int, ...]) -> tuple[int, int | None]:
        """``(flag, checksum)`` of a slice; checksum None in stores without checksums."""
        try:
            value = np.asarray(self._done[self._key(idx)])
        except (ValueError, RuntimeError, OSError):  # a damaged flag chunk: not complete
            return 0, None
        if self.checksums:
            return int(value[0]), int(value[1])
        return int(value), None

    def _flag(self, idx: tuple[int, ...]) -> int:
        return self._state(idx)[0]

    def has(self, index: Any) -> bool:
        """True when the slice's embedding is completely stored."""
        return self._flag(self.normalize_index(index)) != 0

    def __contains__(self, index: Any) -> bool:
        try:
            return self.has(index)
        except IndexError:
            return False

    def _flags(self) -> np.ndarray:
        try:
            flags = np.asarray(self._done[...])
            if self.checksums:
                flags = flags[..., 0]
        except (ValueError, RuntimeError, OSError):  # a damaged flag chunk: read one by one
            flags = np.array([self._flag(i) for i in self.indices()], dtype=np.uint64)
        return flags.reshape(self.lead_shape or (1,))

    def missing(self) -> list[tuple[int, ...]]:
        """Indices of the slices not completely stored, in C order."""
        flags = self._flags()
        return [i for i in self.indices() if flags[self._key(i)] == 0]

    def completed(self) -> list[tuple[int, ...]]:
        """Indices of the slices completely stored, in C order."""
        flags = self._flags()
        return [i for i in self.indices() if flags[self._key(i)] != 0]

    @property
    def n_complete(self) -> int:
        """Number of slices completely stored."""
        return int(np.count_nonzero(self._flags()))

    def stored_digest(self, index: Any) -> int | None:
        """The stored ``done`` value of a slice (0: not complete; 1: no digest), else None."""
        flag = self._flag(self.normalize_index(index))
        return None if flag in (0, NO_DIGEST) else flag

    # ------------------------------------------------------------------ read
    def read_features(self, index: Any) -> np.ndarray:
        """The stored features of one slice in the storage dtype.

        ``(C, e, e)``, or ``(n_tiles + 1, C, e, e)`` for a tiled store (the tiles
        in grid order, then the overview).

        Reads one chunk only, and checks it against the checksum stored with its
        flag (stores of version 3 on; older ones: see
        :func:`~napari_sam.store._integrity.chunk_problem`).

        Raises
        ------
        DamagedSliceError
            (a ``KeyError``) The slice is flagged complete but its chunk is damaged;
            its flag is cleared when the store is writable, so it counts as not
            computed from now on.
        KeyError
            The slice is not completely stored.
        OSError
            The chunk file cannot be read (permissions, I/O error).
        """
        idx = self.normalize_index(index)
        flag, checksum = self._state(idx)
        if flag == 0:
            raise KeyError(
                f"slice {idx} has no complete embedding in {str(self.path)!r}; compute it with "
                "get_or_compute or embed_stack"
            )
        try:
            data = np.asarray(self._features[self._key(idx)])
        except OSError:
            raise
        except Exception as err:  # zarr/numcodecs decode errors: RuntimeError, ValueError...
            reason = f"its chunk cannot be decoded: {type(err).__name__}: {err}"
            raise self._damaged(idx, flag, reason) from err
        problem = chunk_problem(data, self.metadata.chunk_shape, self.metadata.dtype, checksum)
        if problem is not None:
            raise self._damaged(idx, flag, problem)
        return data

    def check_slice(self, index: Any) -> str | None:
        """Read a complete slice's chunk and say what is wrong with it (None: sound).

        A damaged slice is handled as by :meth:`read_features` (flag cleared when
        writable, listed in :attr:`damaged`). Raises ``KeyError`` for a slice that
        is not complete.
        """
        try:
            self.read_features(index)
        except DamagedSliceError as err:
            return err.reason
        return None

    def _damaged(self, idx: tuple[int, ...], flag: int, reason: str) -> DamagedSliceError:
        """Record a damaged slice and clear its flag (if still the one read), for the error."""
        self.damaged.append(idx)
        if not self.read_only:
            try:
                if self._flag(idx) == flag:  # not rewritten meanwhile by another process
                    self._done[self._key(idx)] = 0
            except OSError:  # pragma: no cover - the rewrite will report an unwritable store
                pass
        return DamagedSliceError(self.path, idx, reason)

    def get(self, index: Any, device: Any = None) -> Any:
        """One slice's embedding, features float32 on ``device``.

        Returns
        -------
        Embedding or TiledEmbedding
            A :class:`~napari_sam.predictor.Embedding`, or for a tiled store a
            :class:`~napari_sam.tiling.TiledEmbedding` whose tiles and overview
            are all filled (it holds no image).

        Raises
        ------
        KeyError
            The slice is not completely stored, or it is damaged
            (:class:`~napari_sam.store.DamagedSliceError`, see :meth:`read_features`).
        """
        idx = self.normalize_index(index)
        return self._embedding(self.read_features(idx), idx, device)

    def _embedding(self, data: np.ndarray, idx: tuple[int, ...], device: Any) -> Any:
        """The embedding of one slice's chunk ``data`` (storage layout)."""
        where = {"store": str(self.path), "index": idx}
        device = self.device if device is None else device
        return embedding_of_chunk(self.metadata, self.grid, data, where, device)

    def __getitem__(self, index: Any) -> Any:
        return self.get(index)

    def __call__(self, index: Any) -> Any:
        return self.get(index)

    # ----------------------------------------------------------------- write
    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreWriteError(self.path, "it was opened read-only (mode='r')")

    def chunk_of(self, embedding: Any) -> np.ndarray:
        """One slice's embedding as the store holds it (float32, :attr:`StoreMetadata.chunk_shape`).

        Parameters
        ----------
        embedding : an :class:`~napari_sam.predictor.Embedding`, a
            :class:`~napari_sam.tiling.TiledEmbedding` (its missing tiles are
            computed first), or features: ``(C, e, e)`` / ``(1, C, e, e)``, or for
            a tiled store ``(n_tiles + 1, C, e, e)`` (tiles in grid order, then the
            overview), as a numpy array or torch tensor

        Raises
        ------
        StoreMismatchError
            The embedding is tiled differently from the store, or has another shape.
        """
        return chunk_of_embedding(self.metadata, self.path, embedding)

    def write(self, index: Any, features: Any, *, image_digest: int | None = None) -> None:
        """Store one slice: its features, then its completion flag.

        Parameters
        ----------
        index : slice index
        features : the slice's embedding or features, see :meth:`chunk_of`:
            ``(C, e, e)`` or ``(1, C, e, e)`` (an ``Embedding``), or for a tiled
            store a ``TiledEmbedding`` or ``(n_tiles + 1, C, e, e)``
        image_digest : :func:`~napari_sam.signature.slice_digest` of the slice that was
            embedded (recorded and checked on later reads), or None

        Raises
        ------
        StoreMismatchError
            ``features`` do not have the store's embedding shape or tiling.
        StoreWriteError
            Read-only store, or the write failed (full disk...).
        """
        self._check_writable()
        idx = self.normalize_index(index)
        data = self.chunk_of(features)
        key = self._key(idx)
        try:
            if self._flag(idx) != 0:  # rewrite: never leave new data under an old flag
                self._done[key] = 0
            stored = np.ascontiguousarray(data, dtype=self.metadata.dtype)
            self._features[key] = stored
            flag = np.uint64(done_value(image_digest))
            if self.checksums:  # the flag and the features' checksum, in one chunk
                flag = np.array([flag, features_checksum(stored)], dtype=np.uint64)
            self._done[key] = flag
        except OSError as err:
            raise StoreWriteError(
                self.path, f"writing slice {idx} failed ({type(err).__name__}: {err})", err
            ) from err

    def __setitem__(self, index: Any, embedding: Any) -> None:
        self.check_embedding(embedding)
        self.write(index, embedding)

    def discard(self, index: Any) -> None:
        """Mark one slice as not complete (it will be recomputed)."""
        self._check_writable()
        idx = self.normalize_index(index)
        try:
            self._done[self._key(idx)] = 0
        except OSError as err:
            raise StoreWriteError(self.path, f"{type(err).__name__}: {err}", err) from err

    def __repr__(self) -> str:
        m = self.metadata
        tiles = "" if m.tiling is None else f", {m.tiling['n_tiles']} tiles per slice"
        return (
            f"EmbeddingStore({str(self.path)!r}, {self.n_complete}/{self.n_slices} slices, "
            f"model={m.model_name!r}, shape={m.stack_shape}, dtype={m.dtype}{tiles}"
            f"{', read-only' if self.read_only else ''})"
        )

