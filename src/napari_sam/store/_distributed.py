"""Embedding a stack into a store in parallel with Dask ``distributed``.

The driver (the process calling :func:`embed_stack_distributed`) opens or
creates the store and submits one small task per missing slice. Each task
runs on a worker: it loads the model once per worker (cached by a
:class:`EmbedWorkerPlugin`), reads its slice from the image file, embeds it and
writes the slice's chunk and then its completion flag directly into the shared
zarr store. The driver only receives small :class:`SliceResult` records, so it
never holds slice data; a stopped run resumes with the slices not yet flagged.

Workers must see the image and the store at the same paths as the driver (one
machine, or a shared file system) and have napari-sam-stack installed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from napari_sam.signature import read_slice, slice_digest
from napari_sam.store._embed import EmbedReport
from napari_sam.store._metadata import StoreMismatchError, predictor_identity
from napari_sam.store._zarr import EmbeddingStore, done_value

#: Name under which :class:`EmbedWorkerPlugin` is registered on the workers.
PLUGIN_NAME = "napari-sam-embed"


@dataclass(frozen=True)
class SliceJob:
    """One task: embed (or verify) one slice of the image file into the store.

    Attributes
    ----------
    store_path, stack_path : paths the worker opens (read lazily, one slice)
    index : slice index (leading axes)
    model : registry name or checkpoint path, loaded once per worker
    device, precision : as for :class:`~napari_sam.predictor.Predictor`
    fingerprint : expected weights (:func:`~napari_sam.store.model_fingerprint`);
        a worker that loads other weights refuses to write
    verify_only : only check a stored slice: its pixels against its digest, its
        features against their checksum (a damaged slice's flag is cleared)
    """

    store_path: str
    stack_path: str
    index: tuple[int, ...]
    model: str
    device: str
    precision: str
    fingerprint: str
    verify_only: bool = False


@dataclass(frozen=True)
class SliceResult:
    """What a task did: ``status`` is ``"computed"``, ``"skipped"`` (already
    stored), ``"verified"``, ``"mismatch"`` (stored slice differs from the image)
    or ``"damaged"`` (its stored features are damaged: ``detail`` says how; the
    slice now counts as missing)."""

    index: tuple[int, ...]
    status: str
    seconds: float
    worker: str
    detail: str = ""


class EmbedWorkerPlugin(WorkerPlugin):
    """Per-worker cache of loaded predictors, opened images and opened stores.

    Parameters
    ----------
    torch_threads : threads torch may use in this worker (None: torch's default)
    """

    name = PLUGIN_NAME

    def __init__(self, torch_threads: int | None = None) -> None:
        self.torch_threads = torch_threads
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._predictors: dict[tuple, Any] = {}
        self._stacks: dict[str, Any] = {}
        self._stores: dict[str, EmbeddingStore] = {}

    def __getstate__(self) -> dict:
        return {"torch_threads": self.torch_threads}

    def __setstate__(self, state: dict) -> None:
        self.torch_threads = state["torch_threads"]
        self._reset()

    def setup(self, worker: Any = None) -> None:
        self._reset()

    def teardown(self, worker: Any = None) -> None:
        self._reset()

    def predictor(self, job: SliceJob) -> Any:
        """The worker's predictor for ``job`` (loaded and checked once)."""
        key = (job.model, job.device, job.precision)
        with self._lock:
            if key not in self._predictors:
                import torch

                from napari_sam.predictor import Predictor

                if self.torch_threads:
                    torch.set_num_threads(int(self.torch_threads))
                predictor = Predictor(job.model, device=job.device, precision=job.precision)
                found = predictor_identity(predictor).fingerprint
                if found != job.fingerprint:
                    raise StoreMismatchError(
                        job.store_path,
                        [
                            f"model: worker loaded {job.model!r} with weights {found}, the store "
                            f"holds embeddings of weights {job.fingerprint}"
                        ],
                        hint="Make the workers see the same checkpoint file as the driver.",
                    )
                self._predictors[key] = predictor
            return self._predictors[key]

    def stack(self, path: str) -> Any:
        """The image at ``path``, opened lazily once per worker."""
        with self._lock:
            if path not in self._stacks:
                from napari_sam.io import read_image

                self._stacks[path] = read_image(path, lazy=True)
            return self._stacks[path]

    def store(self, path: str) -> EmbeddingStore:
        """The embedding store at ``path``, opened once per worker."""
        with self._lock:
            if path not in self._stores:
                self._stores[path] = EmbeddingStore.open(path)
            return self._stores[path]


def _worker_cache() -> tuple[EmbedWorkerPlugin, str]:
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # called outside a worker (tests, debugging): no caching
        return EmbedWorkerPlugin(), "local"
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, EmbedWorkerPlugin):
        raise RuntimeError(
            f"the {PLUGIN_NAME!r} worker plugin is not registered on worker {worker.address}; "
            "run the tasks through embed_stack_distributed"
        )
    return plugin, str(worker.address)


def run_slice_job(job: SliceJob) -> SliceResult:
    """Task body: embed one slice and write it (or verify a stored one). Runs on a worker."""
    start = time.perf_counter()
    cache, where = _worker_cache()
    store = cache.store(job.store_path)
    stack = cache.stack(job.stack_path)
    index = tuple(job.index)

    def result(status: str, detail: str = "") -> SliceResult:
        return SliceResult(index, status, time.perf_counter() - start, where, detail)

    if job.verify_only:
        stored = store.stored_digest(index)
        if stored is not None and stored != done_value(slice_digest(read_slice(stack, index))):
            return result("mismatch")
        if not store.has(index):  # discarded meanwhile
            return result("verified")
        problem = store.check_slice(index)  # reads the chunk, checks its checksum
        return result("verified" if problem is None else "damaged", problem or "")
    if store.has(index):
        return result("skipped")
    predictor = cache.predictor(job)
    image = read_slice(stack, index)
    emb = store.compute_embedding(image, predictor)  # tiled stores: every tile, batched
    store.check_embedding(emb)
    store.write(index, emb, image_digest=slice_digest(image))
    return result("computed")


def _gather(client: Any, jobs: list[SliceJob], on_result: Callable[[SliceResult], None]) -> None:
    from distributed import as_completed

    if not jobs:
        return
    futures = client.map(run_slice_job, jobs, pure=False)
    try:
        for future in as_completed(futures, loop=client.loop):
            on_result(future.result())
            future.release()
    except BaseException:
        client.cancel(futures)
        raise


def embed_stack_distributed(
    stack_path: str | os.PathLike,
    store_path: str | os.PathLike,
    model: str | os.PathLike,
    *,
    client: Any,
    device: str = "auto",
    precision: str = "auto",
    contrast_limits: tuple[float, float] | None = None,
    slice_axes: int = 2,
    dtype: str = "float16",
    verify: bool = True,
    overwrite: bool = False,
    max_slices: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    torch_threads: int | None = None,
    on_damage: Any = "warn",
) -> EmbedReport:
    """Embed the missing slices of an image file into a store, one Dask task per slice.

    Parameters
    ----------
    stack_path : image file (``.tif``, ``.zarr``, ``.npy``), opened lazily with
        :func:`napari_sam.io.read_image` by the driver and by every worker
    store_path : embedding store to create or complete
    model : registry name or checkpoint path (loaded once here for its
        fingerprint, once per worker for embedding)
    client : a connected ``distributed.Client``
    device, precision : for the workers' :class:`~napari_sam.predictor.Predictor`
    contrast_limits, slice_axes, dtype, overwrite : see :func:`embed_stack`
    verify : first have the workers re-read the stored slices and check them
        against their digests and checksums; damaged slices are computed again
    on_damage : how the first damaged slice is reported: ``"warn"``, ``"ignore"``
        or ``callback(message)``
    max_slices : compute at most this many missing slices (None: all)
    progress : ``progress(done, total)`` after each finished slice
    torch_threads : torch threads per worker (None: torch's default)

    Returns
    -------
    EmbedReport

    Raises
    ------
    StoreMismatchError
        The store was computed from something else, or stored slices differ from the image.
    StoreWriteError
        The store cannot be written.
    """
    from napari_sam.io import read_image
    from napari_sam.predictor import Predictor

    stack_path = os.path.abspath(os.fspath(stack_path))
    store_path = os.path.abspath(os.fspath(store_path))
    model = os.fspath(model)
    if os.path.exists(model):
        model = os.path.abspath(model)
    stack = read_image(stack_path, lazy=True)
    driver_predictor = Predictor(model, device="cpu", precision=precision)
    store = EmbeddingStore.for_stack(
        store_path,
        stack,
        driver_predictor,
        contrast_limits=contrast_limits,
        slice_axes=slice_axes,
        dtype=dtype,
        overwrite=overwrite,
    )
    fingerprint = store.metadata.model_fingerprint
    del driver_predictor
    client.register_plugin(EmbedWorkerPlugin(torch_threads), name=PLUGIN_NAME)

    def job(index: tuple[int, ...], verify_only: bool = False) -> SliceJob:
        return SliceJob(
            str(Path(store_path)),
            stack_path,
            index,
            model,
            device,
            precision,
            fingerprint,
            verify_only,
        )

    total = store.n_slices
    already = store.completed()
    counts = {"computed": 0, "skipped": 0, "verified": 0, "damaged": 0}
    bad: list[tuple[int, ...]] = []

    def on_verify(res: SliceResult) -> None:
        if res.status == "mismatch":
            bad.append(res.index)
            return
        counts[res.status] += 1
        if res.status == "damaged" and counts["damaged"] == 1:
            from napari_sam.store._integrity import DamagedSliceError

            store.report_damaged(DamagedSliceError(store.path, res.index, res.detail), on_damage)

    if verify:
        _gather(client, [job(i, True) for i in already], on_verify)
        if bad:
            raise StoreMismatchError(
                store.path,
                [
                    f"image: {len(bad)} stored slice(s) differ from the image's pixels: "
                    f"{', '.join(str(i) for i in sorted(bad)[:10])}"
                ],
            )
    todo = store.missing()  # after the verification: with the damaged slices
    if max_slices is not None:
        todo = todo[: max(0, int(max_slices))]
    done = len(already) - counts["damaged"]
    if progress is not None:
        progress(done, total)

    def on_compute(res: SliceResult) -> None:
        nonlocal done
        counts[res.status] += 1
        done += 1
        if progress is not None:
            progress(done, total)

    _gather(client, [job(i) for i in todo], on_compute)
    return EmbedReport(
        total=total,
        already_done=len(already),
        computed=counts["computed"],
        verified=counts["verified"],
        missing=total - store.n_complete,
        damaged=counts["damaged"],
    )
