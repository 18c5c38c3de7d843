"""The annotator's embedding store: slice embeddings kept on disk between sessions.

Qt- and napari-free. A :class:`StoreLink` decides which
:class:`~napari_sam.store.EmbeddingStore` (if any) serves the embeddings of
one image for a given model and contrast limits, opens or creates it on first
use, and falls back to memory only, saying why once, whenever the store
cannot serve:

* it was computed from another model, image or contrast limits (the store's own
  metadata and signature checks refuse it);
* it cannot be created or written (read-only place, full disk);
* the image is RGBA, or the predictor cannot tell which model it runs.

Slices the predictor embeds as tiles (e.g. ``micro`` on slices larger than
256 px) are stored tiled: every tile and the overview, read back as a filled
:class:`~napari_sam.tiling.TiledEmbedding`. A store computed with another
tiling (or untiled) is refused like one from another model.

What the annotator's ``store`` argument means:

``"auto"``
    For an image opened from a file (``layer.source.path``), a store under
    ``cache_dir() / "embeddings"`` named from a hash of the file path, the model
    name, the contrast limits and the image signature (so every channel layer
    of one file, and every set of contrast limits, gets its own store). It is
    a cache: one that no longer matches (other weights under the same model
    name) is recomputed, and the folder can be deleted at any time. Images not
    opened from a file are kept in memory only.
a path
    That store, opened if it exists (its model and image must match; it keeps
    the contrast limits it was computed with) or created with the layer's
    contrast limits. A mismatch is reported once and the annotator works from
    memory; slices normalized with other contrast limits than the store's are
    kept in memory.
an :class:`~napari_sam.store.EmbeddingStore`
    Used as it is after the same checks (read-only stores are only read).
``None`` or ``False``
    Memory only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Hashable
from functools import partial
from pathlib import Path
from typing import Any

from napari_sam.annotation.slicing import ImageGeometry
from napari_sam.annotation.state import Level

__all__ = ["AUTO", "StoreLink", "auto_store_path"]

logger = logging.getLogger("napari_sam")

#: The ``store`` value that picks a store in the cache directory for file-backed images.
AUTO = "auto"
#: Stores kept open per link (one per model and contrast limits used).
_MAX_OPEN = 8

Index = tuple[int, ...]
Limits = tuple[float, float]
Message = Callable[[Level, str], None]


def auto_store_path(
    source_path: str | os.PathLike,
    model_name: str,
    contrast_limits: Limits,
    signature: Any,
    folder: str | os.PathLike | None = None,
) -> Path:
    """Where the automatic store of a file-backed image lives.

    ``folder / "<file stem>-<hash>.zarr"`` (default folder:
    ``napari_sam.model.checkpoint.cache_dir() / "embeddings"``, i.e.
    ``$NAPARI_SAM_CACHE/embeddings`` when that is set). The hash covers the
    absolute file path, the model name, the contrast limits and the
    :class:`~napari_sam.signature.ImageSignature` of the image, so it is the
    same whenever the same file is annotated again with the same model and
    limits.
    """
    if folder is None:
        from napari_sam.model.checkpoint import cache_dir

        folder = cache_dir() / "embeddings"
    source = os.path.abspath(os.fspath(source_path))
    sig = signature.to_dict() if hasattr(signature, "to_dict") else signature
    key = json.dumps(
        [source, str(model_name), [float(v) for v in contrast_limits], sig], sort_keys=True
    )
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source).stem)[:40]
    return Path(folder) / f"{stem or 'image'}-{digest}.zarr"


def _model_name(predictor: Any) -> str:
    """The model's name for a store path (the contract's ``model_name``, else the class)."""
    from napari_sam.contract import as_predictor

    name = as_predictor(predictor, need_embed=False, need_predict=False).model_name
    return str(name or type(predictor).__name__)


class StoreLink:
    """Which embedding store serves one image, opened on first use; memory when none can.

    Parameters
    ----------
    store : ``"auto"``, a path (str or ``os.PathLike``), an
        :class:`~napari_sam.store.EmbeddingStore`, or None / False (memory only);
        see the module documentation
    source : the image array ``(*leading, Y, X[, C])`` (numpy, dask or zarr)
    geometry : its :class:`~napari_sam.annotation.slicing.ImageGeometry`
    source_path : the file the image was opened from (``layer.source.path``), or None
    on_message : ``on_message(level, text)`` for what the user should know
        (``"info"`` or ``"warning"``), called once per distinct message, from the
        thread that embeds (the annotator forwards it to the main thread)

    Raises
    ------
    ValueError
        ``store`` is none of the above.
    """

    def __init__(
        self,
        store: Any,
        source: Any,
        geometry: ImageGeometry,
        *,
        source_path: str | os.PathLike | None = None,
        on_message: Message | None = None,
    ) -> None:
        from napari_sam.store import EmbeddingStore

        self.source = source
        self.geometry = geometry
        self.source_path = None if source_path in (None, "") else os.fspath(source_path)
        self._on_message = on_message or (lambda level, text: None)
        self._given: Any = None
        self.path: Path | None = None
        if store is None or store is False:
            self.mode = "off"
        elif isinstance(store, str) and store == AUTO:
            self.mode = AUTO if self.source_path is not None else "off"
        elif isinstance(store, EmbeddingStore):
            self.mode, self._given, self.path = "store", store, store.path
        elif isinstance(store, (str, os.PathLike)) and os.fspath(store):
            self.mode, self.path = "path", Path(os.fspath(store)).expanduser()
        else:
            raise ValueError(
                f"store must be 'auto', a path to a zarr embedding store, an EmbeddingStore, "
                f"or None/False for memory only; got {store!r}"
            )
        self._lock = threading.Lock()
        self._stores: dict[Hashable, Any] = {}
        self._unwritable: set[str] = set()
        self._told: set[str] = set()
        self._signature: Any = None

    # ------------------------------------------------------------- messages
    @property
    def enabled(self) -> bool:
        """False when embeddings are kept in memory only (``store`` None/False, or
        ``"auto"`` for an image not opened from a file)."""
        return self.mode != "off"

    def _tell(self, level: Level, text: str) -> None:
        """Report ``text`` once: a notification for explicit stores, a log line for auto."""
        if text in self._told:
            return
        self._told.add(text)
        if self.mode == AUTO and level == "info":
            logger.info(text)
        else:
            self._on_message(level, text)

    def _name(self, path: Any = None) -> str:
        path = self.path if path is None else path
        return f"embedding store {str(path)!r}" if path is not None else "embedding store"

    # ----------------------------------------------------------------- open
    def current(self, model_key: Hashable, cl: Limits) -> Any:
        """The store already serving ``(model_key, cl)``, or None (opens nothing)."""
        with self._lock:
            return self._stores.get((model_key, tuple(cl)))

    def store_for(self, predictor: Any, cl: Limits, model_key: Hashable) -> Any:
        """The :class:`~napari_sam.store.EmbeddingStore` for this model and limits, or None.

        Opens or creates it on the first call for ``(model_key, cl)`` (which
        reads a few strided slices for the image signature and hashes the
        model's weights once); later calls return the same answer.
        """
        if self.mode == "off":
            return None
        cl = (float(cl[0]), float(cl[1]))
        key = (model_key, cl)
        with self._lock:
            if key not in self._stores:
                while len(self._stores) >= _MAX_OPEN:
                    self._stores.pop(next(iter(self._stores)))
                self._stores[key] = self._open(predictor, cl)
            return self._stores[key]

    def _bypass_reason(self, predictor: Any) -> str | None:
        g = self.geometry
        if g.rgb and g.channels == 4:
            return (f"the image is RGBA; the {self._name()} holds RGB slices only, so "
                    "embeddings are kept in memory")
        return None

    def _open(self, predictor: Any, cl: Limits) -> Any:
        from napari_sam.store import NotAStoreError, StoreMismatchError, StoreWriteError

        reason = self._bypass_reason(predictor)
        if reason is not None:
            self._tell("info", reason)
            return None
        try:
            if self.mode == AUTO:
                return self._open_auto(predictor, cl)
            store = self._open_given(predictor, cl)
        except StoreMismatchError as err:
            self._tell("warning", f"{err}\nThe annotator keeps embeddings in memory instead.")
            return None
        except StoreWriteError as err:
            self._tell("warning", f"{err} The annotator keeps working, with embeddings in "
                       "memory only.")
            return None
        except (NotAStoreError, FileExistsError, OSError, TypeError, ValueError) as err:
            self._tell("warning", f"cannot use the {self._name()}: {type(err).__name__}: {err}. "
                       "The annotator keeps embeddings in memory.")
            return None
        limits = store.metadata.contrast_limits
        if limits is None or tuple(limits) != cl:
            self._tell("info", f"the {self._name(store.path)} was computed with contrast limits "
                       f"{limits}; slices normalized with {cl} (the annotator's intensity "
                       "range) are kept in memory (to use the store: intensity range 'display "
                       f"contrast limits', set to {limits})")
            return None
        return store

    def _slice_axes(self) -> int:
        return 3 if self.geometry.rgb else 2

    def _open_given(self, predictor: Any, cl: Limits) -> Any:
        from napari_sam.store import EmbeddingStore, StoreMismatchError, StoreWriteError
        from napari_sam.store._embed import describe_stack

        if self.mode == "store":
            store = self._given
            expect, _ = describe_stack(self.source, predictor, slice_axes=self._slice_axes(),
                                       existing=store.metadata)
            differences = store.metadata.differences(expect)
            if differences:
                raise StoreMismatchError(store.path, differences)
            return store
        path = self.path
        assert path is not None  # (mode "path")
        if not path.exists():  # a new store: computed with the layer's limits
            return EmbeddingStore.for_stack(path, self.source, predictor,
                                            contrast_limits=cl, slice_axes=self._slice_axes())
        try:  # an existing store keeps its limits; model and image must match
            return EmbeddingStore.for_stack(path, self.source, predictor,
                                            slice_axes=self._slice_axes())
        except StoreWriteError:
            store = EmbeddingStore.for_stack(path, self.source, predictor,
                                             slice_axes=self._slice_axes(), mode="r")
            self._unwritable.add(str(store.path))
            self._tell("warning", f"the {self._name()} is read-only: stored slices are read, "
                       "new embeddings are kept in memory only")
            return store

    def _open_auto(self, predictor: Any, cl: Limits) -> Any:
        from napari_sam.signature import image_signature
        from napari_sam.store import EmbeddingStore, StoreMismatchError

        if self._signature is None:
            self._signature = image_signature(self.source, self._slice_axes())
        assert self.source_path is not None  # (mode "auto": a file opened from disk)
        path = auto_store_path(self.source_path, _model_name(predictor), cl, self._signature)
        kwargs: dict[str, Any] = {"contrast_limits": cl, "slice_axes": self._slice_axes()}
        try:
            store = EmbeddingStore.for_stack(path, self.source, predictor, **kwargs)
        except StoreMismatchError as err:
            # the automatic store is a cache: recompute one that no longer matches
            logger.info("recomputing the automatic embedding store: %s", err)
            store = EmbeddingStore.for_stack(path, self.source, predictor, overwrite=True,
                                             **kwargs)
        logger.info("embedding store for %r: %s", self.source_path, store.path)
        return store

    # ------------------------------------------------------------ embedding
    def embedding(
        self,
        store: Any,
        idx: Index,
        image: Any,
        predictor: Any,
        compute: Callable[[], Any],
        lock: Any,
    ) -> Any:
        """Slice ``idx`` from ``store``, else computed, stored and returned.

        ``compute()`` embeds in memory (it takes ``lock`` itself); it is used
        whenever the store cannot serve. ``lock`` serializes forward passes.
        """
        from napari_sam.store import StoreMismatchError, StoreWriteError

        path = str(store.path)
        write_failed = partial(self._write_failed, store)
        try:
            if store.has(idx):  # read (and verify); a damaged slice is recomputed, said once
                return store.get_or_compute(idx, image, predictor, on_damage=self._damaged,
                                            on_write_error=write_failed)
        except StoreMismatchError as err:
            if self.mode != AUTO:
                self._give_up(store, f"{err}\nThe annotator keeps embeddings in memory instead.")
                return compute()
            try:  # the automatic store is a cache: recompute the changed slice
                store.discard(idx)
            except StoreWriteError as write_err:
                self._write_failed(store, write_err)
        except (OSError, ValueError) as err:  # an unreadable chunk, a store deleted meanwhile...
            self._give_up(store, f"cannot read slice {idx} from the {self._name(path)} "
                          f"({type(err).__name__}: {err}); embeddings are kept in memory")
            return compute()
        if store.read_only or path in self._unwritable:
            return compute()
        try:
            with lock:
                return store.get_or_compute(idx, image, predictor, on_damage=self._damaged,
                                            on_write_error=write_failed)
        except StoreMismatchError as err:  # the new embedding does not fit the store
            self._give_up(store, f"{err}\nThe annotator keeps embeddings in memory instead.")
            return compute()

    def _damaged(self, message: str) -> None:
        """The store found a damaged slice (said once per store; it is recomputed and
        rewritten): a warning for the user instead of a ``StoreDamageWarning``."""
        self._tell("warning", message)

    def _write_failed(self, store: Any, err: BaseException) -> None:
        self._unwritable.add(str(store.path))
        self._tell("warning", f"{err} The annotator keeps working: slices embedded from now on "
                   "are kept in memory only (already stored slices are still read).")

    def _give_up(self, store: Any, message: str) -> None:
        with self._lock:
            for key, value in list(self._stores.items()):
                if value is store:
                    self._stores[key] = None
        self._tell("warning", message)
