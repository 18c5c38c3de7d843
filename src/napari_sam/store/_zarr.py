"""The on-disk embedding store: one zarr chunk per slice, a completion flag per slice.

Layout of ``STORE.zarr`` (a zarr group)::

    attrs["napari_sam_embeddings"]   StoreMetadata as JSON (model, image, normalization...)
    features   (*lead, C, e, e)      float16 (default) or float32, one chunk per slice;
               (*lead, n_tiles + 1, C, e, e) for tiled slices (metadata ``tiling``):
                                     the tiles in grid order, then the overview
    done       (*lead,)              uint64, one chunk per slice: 0 = not complete,
                                     otherwise the slice's digest (see below)

A 2D image (no leading axes) is stored with a leading axis of length 1.

The ``done`` value of a slice is written after its features, so a process
killed in the middle of a write leaves that slice "not complete" and it is
recomputed later: a half-written slice is never returned. The value is the
slice's :func:`~napari_sam.signature.slice_digest` (mapped away from 0 and 1),
or 1 when the embedding was stored without its image; a slice read again is
checked against it. Each flag is its own chunk file, so processes writing
different slices never touch the same file.
"""

from __future__ import annotations

import os
import shutil
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.signature import read_slice, slice_digest, slice_indices
from napari_sam.store._metadata import (
    NotAStoreError,
    StoreMetadata,
    StoreMismatchError,
    StoreWriteError,
    describe_tiling,
    predictor_identity,
    tiling_of_grid,
)
from napari_sam.tiling import TiledEmbedding, TileGrid, embed_untiled

#: Key of the metadata in the zarr group's attributes.
ATTRS_KEY = "napari_sam_embeddings"
#: ``done`` value of a complete slice stored without the digest of its image.
NO_DIGEST = 1


def done_value(digest: int | None) -> int:
    """The ``done`` flag for a slice digest (never 0, which means "not complete")."""
    if digest is None:
        return NO_DIGEST
    digest = int(digest)
    return digest + 2 if digest < 2 else digest


def _zarr():
    import zarr

    return zarr


def _create_array(group: Any, name: str, **kwargs: Any) -> Any:
    """``create_array`` on zarr 3, ``create_dataset`` on zarr 2."""
    if hasattr(group, "create_array"):
        return group.create_array(name, **kwargs)
    return group.create_dataset(name, **kwargs)  # pragma: no cover - zarr 2


def _is_store(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


def _read_metadata(path: Path) -> StoreMetadata:
    zarr = _zarr()
    if not path.exists():
        raise FileNotFoundError(f"embedding store not found: {str(path)!r}")
    if not _is_store(path):
        raise NotAStoreError(
            f"{str(path)!r} is not a zarr embedding store (no zarr group metadata); "
            "choose a new path for the store"
        )
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as err:  # an array, a corrupt group, an unreadable file...
        raise NotAStoreError(
            f"{str(path)!r} is not a readable zarr group ({type(err).__name__}: {err}); "
            "choose a new path for the store"
        ) from err
    if ATTRS_KEY not in attrs:
        raise NotAStoreError(
            f"{str(path)!r} is a zarr group but not a napari-sam embedding store "
            f"(no {ATTRS_KEY!r} attribute); choose a new path for the store"
        )
    return StoreMetadata.from_dict(attrs[ATTRS_KEY], path)


class EmbeddingStore:
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
        self.grid: TileGrid | None = None
        if metadata.tiling is not None:
            t = metadata.tiling
            grid = TileGrid(tuple(metadata.original_size), t["tile"], t["overlap"])
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
            original_size=stack_shape[len(stack_shape) - slice_ndim :][:2],
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
        if path.exists():
            if not overwrite:
                raise FileExistsError(
                    f"{str(path)!r} already exists; open it with EmbeddingStore.open, or pass "
                    "overwrite=True to replace it"
                )
            _read_metadata(path)  # raises NotAStoreError: never delete other data
            try:
                shutil.rmtree(path)
            except OSError as err:
                raise StoreWriteError(path, f"could not remove the old store ({err})", err) from err
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
        zarr = _zarr()
        lead = metadata.lead_shape or (1,)
        ones = (1,) * len(lead)
        try:
            if not path.parent.exists():
                path.parent.mkdir(parents=True)
            group = zarr.open_group(str(tmp), mode="w")
            _create_array(
                group,
                "features",
                shape=(*lead, *metadata.chunk_shape),
                chunks=(*ones, *metadata.chunk_shape),
                dtype=metadata.dtype,
                fill_value=0,
            )
            _create_array(group, "done", shape=lead, chunks=ones, dtype="uint64", fill_value=0)
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
        metadata = _read_metadata(path)
        if expect is not None:
            differences = metadata.differences(expect)
            if differences:
                raise StoreMismatchError(path, differences)
        if mode == "r+" and not os.access(path, os.W_OK):
            raise StoreWriteError(
                path, "the directory is not writable (open it with mode='r' to only read)"
            )
        group = _zarr().open_group(str(path), mode=mode)
        return cls(path, metadata, group, read_only=mode == "r")

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
                existing=_read_metadata(path),
            )
            store = cls.open(path, expect, mode=mode)
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
            store = cls.create_from(
                path, StoreMetadata(**fields_, dtype=dtype), overwrite=overwrite
            )
            if probe is not None:
                index, features, digest = probe
                store.write(index, features, image_digest=digest)
        if _weakrefable(predictor):
            store._checked_predictors.add(predictor)
        return store

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
    def _flag(self, idx: tuple[int, ...]) -> int:
        try:
            return int(self._done[self._key(idx)])
        except (ValueError, RuntimeError, OSError):  # pragma: no cover - corrupt flag chunk
            return 0

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
        except (ValueError, RuntimeError, OSError):  # pragma: no cover - corrupt flag chunk
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

        Reads one chunk only.

        Raises
        ------
        KeyError
            The slice is not completely stored.
        """
        idx = self.normalize_index(index)
        if self._flag(idx) == 0:
            raise KeyError(
                f"slice {idx} has no complete embedding in {str(self.path)!r}; compute it with "
                "get_or_compute or embed_stack"
            )
        return np.asarray(self._features[self._key(idx)])

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
            The slice is not completely stored.
        """
        idx = self.normalize_index(index)
        return self._embedding(self.read_features(idx), idx, device)

    def _embedding(self, data: np.ndarray, idx: tuple[int, ...], device: Any) -> Any:
        """The embedding of one slice's chunk ``data`` (storage layout)."""
        import torch

        from napari_sam.predictor import Embedding, resized_shape

        features = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        device = self.device if device is None else device
        if str(device) != "cpu":
            features = features.to(device)
        m = self.metadata
        info = {"model": m.model_name, "precision": m.precision}
        where = {"store": str(self.path), "index": idx}
        limits = m.contrast_limits
        if self.grid is None:
            return Embedding(
                features=features[None],
                original_size=tuple(m.original_size),
                input_size=tuple(m.input_size),
                contrast_limits=limits,
                metadata={**info, **where},
            )
        grid = self.grid
        tiles = []
        for i in range(len(grid)):
            r0, c0, r1, c1 = grid.window(i)
            h, w = r1 - r0, c1 - c0
            tiles.append(
                Embedding(features[i : i + 1], (h, w), resized_shape(h, w, grid.tile), limits, info)
            )
        overview = Embedding(
            features[-1:], tuple(m.original_size), tuple(m.input_size), limits, dict(info)
        )
        return TiledEmbedding.from_features(
            grid,
            tiles,
            overview,
            m.original_size,
            limits,
            {**info, "tiling": dict(m.tiling), **where},
        )

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
        m = self.metadata

        def numpy(t: Any) -> np.ndarray:
            if hasattr(t, "detach"):
                t = t.detach().float().cpu().numpy()
            return np.asarray(t)

        if isinstance(embedding, TiledEmbedding):
            found = tiling_of_grid(embedding.grid)
            if found != m.tiling:
                raise StoreMismatchError(
                    self.path,
                    [
                        f"tiling: store {describe_tiling(m.tiling)}, this embedding "
                        f"{describe_tiling(found)}"
                    ],
                    hint="Embed with the predictor settings (tiling, tile_overlap) the store "
                    "was computed with, or recompute the store (overwrite=True).",
                )
            embedding.compute()
            parts = [embedding.tile(i) for i in range(embedding.n_tiles)]
            parts.append(embedding.overview())
            maps = [numpy(p.features) for p in parts]
            data = np.stack([f[0] if f.ndim == 4 else f for f in maps])
        else:
            data = numpy(getattr(embedding, "features", embedding))
        shape = m.chunk_shape
        if m.tiling is None and data.shape == (1, *shape):
            data = data[0]
        if data.shape != shape:
            raise StoreMismatchError(
                self.path,
                [
                    f"embedding shape: store {shape} ({describe_tiling(m.tiling)}), this "
                    f"embedding {data.shape}"
                ],
                hint="Was the slice embedded by the store's model, with the store's tiling?",
            )
        return data

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
            self._features[key] = data.astype(self.metadata.dtype)
            self._done[key] = np.uint64(done_value(image_digest))
        except OSError as err:
            raise StoreWriteError(
                self.path, f"writing slice {idx} failed ({type(err).__name__}: {err})", err
            ) from err

    def __setitem__(self, index: Any, embedding: Any) -> None:
        self.check_embedding(embedding)
        self.write(index, embedding)

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

    def discard(self, index: Any) -> None:
        """Mark one slice as not complete (it will be recomputed)."""
        self._check_writable()
        idx = self.normalize_index(index)
        try:
            self._done[self._key(idx)] = 0
        except OSError as err:
            raise StoreWriteError(self.path, f"{type(err).__name__}: {err}", err) from err

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
    ) -> Any:
        """The embedding of one slice: read from the store, or computed and stored.

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
        device = getattr(predictor, "device", None)
        digest = slice_digest(image) if (verify or flag == 0) else None
        if flag != 0:
            if verify and flag != NO_DIGEST and flag != done_value(digest):
                raise StoreMismatchError(
                    self.path,
                    [f"image: slice {idx} differs from the slice its stored embedding came from"],
                )
            return self.get(idx, device=device)
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
            return embed_untiled(predictor, image, m.contrast_limits)
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

        features = getattr(emb, "features", None)
        if not dataclasses.is_dataclass(emb) or not hasattr(features, "to"):
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
        ``index in emb``.
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

    def __repr__(self) -> str:
        m = self.metadata
        tiles = "" if m.tiling is None else f", {m.tiling['n_tiles']} tiles per slice"
        return (
            f"EmbeddingStore({str(self.path)!r}, {self.n_complete}/{self.n_slices} slices, "
            f"model={m.model_name!r}, shape={m.stack_shape}, dtype={m.dtype}{tiles}"
            f"{', read-only' if self.read_only else ''})"
        )


def _weakrefable(obj: Any) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


class BoundEmbeddings:
    """An :class:`EmbeddingStore` tied to its stack and predictor (:meth:`EmbeddingStore.bound`).

    ``emb[index]`` and ``emb(index)`` return the slice's embedding, computing and
    storing it first when it is missing; ``index in emb`` says whether it is stored.
    """

    def __init__(self, store: EmbeddingStore, stack: Any, predictor: Any, verify: bool) -> None:
        self.store = store
        self.stack = stack
        self.predictor = predictor
        self.verify = verify

    def __getitem__(self, index: Any) -> Any:
        idx = self.store.normalize_index(index)
        if not self.verify and self.store.has(idx):
            return self.store.get(idx)
        return self.store.get_or_compute(
            idx, read_slice(self.stack, idx), self.predictor, verify=self.verify
        )

    def __call__(self, index: Any) -> Any:
        return self[index]

    def __contains__(self, index: Any) -> bool:
        return index in self.store

    def __repr__(self) -> str:
        return f"BoundEmbeddings({self.store!r})"
