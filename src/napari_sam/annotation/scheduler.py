"""Which slice embeddings to compute in the background, in what order, and who waits.

Qt-free: the scheduler decides, a *launcher* given by the caller runs the work
(the annotator's launcher starts a ``napari.qt.threading`` worker; tests pass a
synchronous one). Every method is meant for the GUI's main thread; only the
launched work runs elsewhere.

Order: explicit requests (the slice the user looks at, a pending segmentation)
go to the front of the queue, prefetches (neighbouring slices) to the back;
one embedding runs at a time. When the queue runs dry the ``on_idle`` callback
may queue more prefetches.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

__all__ = ["EmbedRequest", "EmbeddingScheduler", "Launcher"]


@dataclass(frozen=True)
class EmbedRequest:
    """One slice to embed.

    Attributes
    ----------
    key : the cache key of the embedding
    slice_index : one int per leading axis of the image
    contrast_limits : ``(low, high)`` used to normalize the slice
    prefetch : True for speculative work (dropped when the user moves on)
    """

    key: Hashable
    slice_index: tuple[int, ...]
    contrast_limits: tuple[float, float]
    prefetch: bool = False


class Handle(Protocol):
    """What a launcher returns: something that can be asked to stop."""

    def quit(self) -> None:
        """Ask the work to stop as soon as it can."""


#: ``launcher(request, finished)`` starts embedding ``request`` and returns a
#: :class:`Handle`; it must call ``finished()`` on the main thread when the
#: work ends (successfully or not), after storing the embedding in the cache.
Launcher = Callable[[EmbedRequest, Callable[[], None]], Handle]


class EmbeddingScheduler:
    """A queue of slice embeddings, run one at a time through a launcher.

    Parameters
    ----------
    launcher : see :data:`Launcher`
    is_cached : ``is_cached(key) -> bool`` (e.g. ``key in cache``)
    on_idle : called when the queue is empty and nothing runs (may queue
        prefetches); settable later as the ``on_idle`` attribute
    """

    def __init__(
        self,
        launcher: Launcher,
        is_cached: Callable[[Hashable], bool],
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._launcher = launcher
        self._is_cached = is_cached
        self.on_idle = on_idle
        self._queue: list[EmbedRequest] = []
        self._waiters: dict[Hashable, list[Callable[[], None]]] = {}
        self._running: EmbedRequest | None = None
        self._handle: Any = None
        self._failed = False
        self.closed = False

    # ----------------------------------------------------------------- state
    @property
    def running(self) -> EmbedRequest | None:
        """The request being embedded, or None."""
        return self._running

    @property
    def handle(self) -> Any:
        """The launcher's handle of the running work (e.g. a napari worker), or None."""
        return self._handle

    @property
    def busy(self) -> bool:
        """True while an embedding runs."""
        return self._running is not None

    @property
    def failed(self) -> bool:
        """True after a failure until the next explicit request (prefetching pauses)."""
        return self._failed

    def mark_failed(self) -> None:
        """Record that the running work failed: prefetching stops until a new request."""
        self._failed = True

    def queued(self) -> list[EmbedRequest]:
        """The waiting requests, next first (a copy)."""
        return list(self._queue)

    # -------------------------------------------------------------- requests
    def request(self, req: EmbedRequest, on_ready: Callable[[], None] | None = None) -> None:
        """Embed ``req`` (front of the queue unless it is a prefetch).

        ``on_ready()`` is called once the embedding is cached: immediately when
        it already is, else on the main thread after the work finished. It is
        not called when the work fails or is cancelled.
        """
        if self.closed:
            return
        if self._is_cached(req.key):
            if on_ready is not None:
                on_ready()
            return
        if on_ready is not None:
            self._waiters.setdefault(req.key, []).append(on_ready)
        if not req.prefetch:
            self._failed = False
        elif self._failed:
            return
        if self._running is not None and self._running.key == req.key:
            return
        self._queue = [q for q in self._queue if q.key != req.key]
        if req.prefetch:
            self._queue.append(req)
        else:
            self._queue.insert(0, req)
        self._pump()

    def drop_prefetches(self) -> None:
        """Forget queued prefetches (e.g. the user moved to another slice)."""
        self._queue = [q for q in self._queue if not q.prefetch]

    def cancel(self) -> bool:
        """Drop the queue and the waiters; ask the running work to quit. Returns if any was."""
        had = self._running is not None or bool(self._queue)
        self._queue.clear()
        self._waiters.clear()
        if self._handle is not None:
            self._handle.quit()
        return had

    def close(self) -> None:
        """Cancel everything; later requests and results are ignored."""
        self.cancel()
        self.closed = True

    # -------------------------------------------------------------- internal
    def _pump(self) -> None:
        if self._running is not None or self.closed:
            return
        while self._queue:
            req = self._queue.pop(0)
            if self._is_cached(req.key):
                self._fire(req.key)
                continue
            self._running = req
            handle = self._launcher(req, partial(self._finished, req))
            if self._running is req:  # a synchronous launcher may already be done
                self._handle = handle
            return
        if self.on_idle is not None and not self._failed:
            self.on_idle()
            if self._queue:
                self._pump()

    def _fire(self, key: Hashable) -> None:
        for callback in self._waiters.pop(key, []):
            callback()

    def _finished(self, req: EmbedRequest) -> None:
        if self._running is not req:
            return
        self._running = None
        self._handle = None
        if self.closed:
            return
        if self._is_cached(req.key):
            self._fire(req.key)
        else:  # failed, cancelled or evicted at once: no result, and no more prefetching
            self._waiters.pop(req.key, None)
            self._failed = True
        self._pump()
