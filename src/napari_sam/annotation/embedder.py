"""Slice embeddings of one image: the model on demand, the LRU cache, background work.

Qt- and napari-free: background embeddings are ``"embed"``
:class:`~napari_sam.annotation.jobs.Job` s of the annotator's
:class:`~napari_sam.annotation.jobs.JobRunner`, queued by the
:class:`~napari_sam.annotation.scheduler.EmbeddingScheduler`; the image is read
through its array (``source[slice_index]``), never through a napari layer, so
worker threads touch no GUI object.

Cache keys are ``(layer_key, slice_index, limits, model_key)``; ``limits`` is
the token of the :class:`~napari_sam.annotation.intensity.IntensityRange`
(:data:`~napari_sam.annotation.intensity.ROBUST`, or the display limits),
resolved to numbers only where a slice is normalized (in the job's thread).

Lookup order: the in-memory cache, then the embedding store of a
:class:`~napari_sam.annotation.store_link.StoreLink` (one slice read), else
the predictor computes the slice and it is written to the store (when one
serves this model and these contrast limits) and kept in memory. A tiled
slice is embedded whole (every tile and the overview) when it goes to a
store, and lazily (tiles on first use) when it is kept in memory only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Hashable
from functools import partial
from typing import Any

import numpy as np

from napari_sam.annotation.intensity import IntensityRange
from napari_sam.annotation.jobs import Job, JobRunner, Status
from napari_sam.annotation.scheduler import EmbeddingScheduler, EmbedRequest
from napari_sam.annotation.slicing import ImageGeometry, neighbour_indices
from napari_sam.annotation.store_link import StoreLink
from napari_sam.cache import EmbeddingCache
from napari_sam.contract import as_predictor

__all__ = ["SliceEmbedder"]

Index = tuple[int, ...]
Limits = tuple[float, float]


class SliceEmbedder:
    """Compute, cache and prefetch the embeddings of an image's 2D slices.

    Parameters
    ----------
    source : the image array (numpy, dask or zarr), ``(*leading, Y, X[, C])``
    geometry : its :class:`~napari_sam.annotation.slicing.ImageGeometry`
    layer_key : hashable identity of the image (part of every cache key)
    cache : the (possibly shared) :class:`~napari_sam.cache.EmbeddingCache`
    runner : the :class:`~napari_sam.annotation.jobs.JobRunner` that runs
        background embeddings (it reports their failures)
    predictor : a loaded predictor, or None to load ``model`` when first needed
    model, device, precision : what :class:`~napari_sam.predictor.Predictor` loads
    on_embedded : ``on_embedded(slice_index)`` when a background embedding is stored
    store : a :class:`~napari_sam.annotation.store_link.StoreLink` (embeddings on
        disk), or None for memory only
    intensity : the image's :class:`~napari_sam.annotation.intensity.IntensityRange`
        (None: contrast limits are given as numbers)
    describe : ``describe(slice_index) -> str`` for messages (e.g. ``"t=1, z=14"``)
    """

    def __init__(
        self,
        source: Any,
        geometry: ImageGeometry,
        layer_key: Hashable,
        cache: EmbeddingCache,
        runner: JobRunner,
        *,
        predictor: Any = None,
        model: str = "micro",
        device: str = "auto",
        precision: str = "auto",
        on_embedded: Callable[[Index], None] | None = None,
        store: StoreLink | None = None,
        intensity: IntensityRange | None = None,
        describe: Callable[[Index], str] | None = None,
    ) -> None:
        self.source = source
        self.intensity = intensity
        self.describe = describe or (lambda idx: f"slice {idx}")
        self.geometry = geometry
        self.layer_key = layer_key
        self.cache = cache
        self.runner = runner
        self._predictor = predictor
        self._model, self._device, self._precision = model, device, precision
        self._predictor_lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self._on_embedded = on_embedded or (lambda idx: None)
        self.store = store
        self._set_model_key()
        self.scheduler = EmbeddingScheduler(self._launch, cache.__contains__)

    # ----------------------------------------------------------------- model
    @property
    def model(self) -> str:
        """Registry name or checkpoint path loaded on demand."""
        return self._model

    @property
    def predictor(self) -> Any:
        """The predictor, or None while it is not loaded."""
        return self._predictor

    @property
    def model_key(self) -> tuple:
        """The model part of the cache keys (stable while a model loads)."""
        return self._model_key

    def _set_model_key(self) -> None:
        self._model_key: tuple[Any, ...]
        if self._predictor is not None:
            self._model_key = ("predictor", id(self._predictor))
        else:
            self._model_key = (str(self._model), self._device, self._precision)

    def set_model(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        precision: str | None = None,
        predictor: Any = None,
    ) -> None:
        """Switch model (loaded on demand) or predictor; drops the old model's embeddings."""
        with self._predictor_lock:
            old = self._model_key
            self._model = model if model is not None else self._model
            self._device = device if device is not None else self._device
            self._precision = precision if precision is not None else self._precision
            self._predictor = predictor
            self._set_model_key()
        self.cache.discard_where(lambda key: isinstance(key, tuple) and key[3] == old)

    def loading(self) -> Generator[Any, Any, Any]:
        """Job steps: load the model (saying so first when it is not loaded yet).

        Yields a :class:`~napari_sam.annotation.jobs.Status` and ``"model loaded"``;
        returns the predictor.
        """
        if self._predictor is None:
            yield Status(f"loading model {self._model} (first use)")
        predictor = self.load_predictor()
        yield "model loaded"
        return predictor

    def load_predictor(self) -> Any:
        """The predictor, loading the model now if needed (thread-safe, blocking)."""
        with self._predictor_lock:
            if self._predictor is None:
                from napari_sam.predictor import Predictor

                self._predictor = Predictor(self._model, self._device, self._precision)
            return self._predictor

    # ------------------------------------------------------------ embeddings
    def limits(self) -> Any:
        """The limits token of the cache keys now (main thread); see the module doc."""
        if self.intensity is None:
            raise RuntimeError("no IntensityRange given: pass contrast limits explicitly")
        return self.intensity.token()

    def resolve(self, cl: Any) -> Limits:
        """``(low, high)`` of a limits token (any thread; may measure the robust range)."""
        if self.intensity is None:
            low, high = cl
            return (float(low), float(high))
        return self.intensity.resolve(cl)

    def measuring(self, cl: Any) -> Generator[Any, Any, Any]:
        """Job steps: resolve ``cl``, saying so when the image must be read first."""
        if self.intensity is not None and self.intensity.needs_measuring(cl):
            yield Status("measuring the intensity range of the image")
        return self.resolve(cl)

    def key(self, idx: Index, cl: Limits) -> tuple:
        """Cache key of slice ``idx`` normalized with contrast limits ``cl``."""
        return (self.layer_key, tuple(idx), cl, self._model_key)

    def read_slice(self, idx: Index) -> np.ndarray:
        """Slice ``idx`` as numpy, ``(Y, X)`` or ``(Y, X, 3)`` (RGBA: alpha dropped)."""
        image = np.asarray(self.source[tuple(idx)])
        if self.geometry.rgb and image.shape[-1] == 4:
            image = image[..., :3]
        return image

    def is_cached(self, idx: Index, cl: Limits) -> bool:
        """True when the embedding is in the cache."""
        return self.key(idx, cl) in self.cache

    def embedding(self, idx: Index, cl: Limits) -> Any:
        """The embedding of slice ``idx`` (cached; computed in this thread if missing)."""
        return self.cache.get_or_compute(self.key(idx, cl), partial(self._compute, idx, cl))

    def _compute(self, idx: Index, cl: Limits) -> Any:
        predictor = self.load_predictor()
        image = self.read_slice(idx)
        cl = self.resolve(cl)
        compute = partial(self._embed, predictor, image, cl)
        link = self.store
        store = None if link is None else link.store_for(predictor, cl, self._model_key)
        if link is None or store is None:
            return compute()
        emb = link.embedding(store, idx, image, predictor, compute, self._embed_lock)
        # read back from the store: give it its slice, so small objects can be zoomed into
        return as_predictor(predictor, need_embed=False, need_predict=False).with_image(
            emb, image)

    def _embed(self, predictor: Any, image: np.ndarray, cl: Limits) -> Any:
        with self._embed_lock:  # one forward pass at a time
            return predictor.embed(image, contrast_limits=cl)

    def stored(self, cl: Limits) -> Any:
        """The :class:`~napari_sam.store.EmbeddingStore` serving ``cl`` and the current
        model, or None (memory only, or nothing embedded yet)."""
        if self.store is None:
            return None
        if self.intensity is not None and self.intensity.needs_measuring(cl):
            return None  # nothing embedded with it yet
        return self.store.current(self._model_key, self.resolve(cl))

    # ------------------------------------------------------------ background
    @property
    def busy(self) -> bool:
        """True while a background embedding runs."""
        return self.scheduler.busy

    @property
    def handle(self) -> Any:
        """The running worker, or None."""
        return self.scheduler.handle

    def request(
        self,
        idx: Index,
        cl: Limits,
        *,
        on_ready: Callable[[], None] | None = None,
        prefetch: bool = False,
    ) -> None:
        """Embed slice ``idx`` in the background; ``on_ready()`` once it is cached."""
        self.scheduler.request(EmbedRequest(self.key(idx, cl), idx, cl, prefetch), on_ready)

    def prefetch_around(self, idx: Index, cl: Limits) -> None:
        """Queue the neighbours of ``idx`` along z (when the cache has room for them)."""
        if self.cache.maxsize < 3:
            return
        for nb in neighbour_indices(self.geometry, idx, radius=1):
            self.request(nb, cl, prefetch=True)

    def job(self, idx: Index, cl: Limits, *, prefetch: bool = False) -> Job:
        """The ``"embed"`` job of slice ``idx``: loads the model, then embeds (or reads
        the store); returns the embedding, which is in the cache afterwards."""
        what = f"{'prefetching' if prefetch else 'embedding'} {self.describe(idx)}"
        return Job("embed", what, partial(self._steps, idx, cl), total=2, background=prefetch)

    def _launch(self, req: EmbedRequest, finished: Callable[[], None]) -> Any:
        job = self.job(req.slice_index, req.contrast_limits, prefetch=req.prefetch)
        job.on_result = lambda _: self._on_embedded(req.slice_index)
        job.on_error = lambda _: self.scheduler.mark_failed()  # no prefetching until asked
        job.on_finished = finished
        return self.runner.run(job, blocking=False)

    def _steps(self, idx: Index, cl: Limits, cancel: threading.Event) -> Generator[Any, Any, Any]:
        yield from self.loading()
        yield from self.measuring(cl)
        if not self.is_cached(idx, cl):
            yield Status(f"embedding {self.describe(idx)}")
        embedding = self.embedding(idx, cl)
        yield "embedded"
        return embedding

    def cancel(self) -> bool:
        """Drop queued requests and ask the running worker to quit; True if there was any."""
        return self.scheduler.cancel()

    def close(self) -> None:
        """Cancel and ignore everything from now on."""
        self.scheduler.close()
