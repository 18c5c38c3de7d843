"""A bounded, thread-safe in-memory LRU cache for slice embeddings.

Free of Qt, napari and torch: values are opaque (an
:class:`~napari_sam.predictor.Embedding` in practice). Keys are any hashable
value; the annotator uses ``(layer_key, slice_index, contrast_limits, model_key)``
where ``slice_index`` is the tuple of indices along the image's non-spatial
(leading) axes, e.g. ``(z,)`` for a ZYX stack or ``(t, z)`` for TZYX.

:meth:`EmbeddingCache.get_or_compute` computes a missing value at most once
even when several threads ask for the same key at the same time (a GUI
prefetch worker and a scripted call, say): the later callers wait for the
first one's result instead of embedding the slice a second time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_CACHE_SIZE", "CacheStats", "EmbeddingCache"]

#: Default number of slice embeddings kept (a ViT-B embedding is 4 MiB).
DEFAULT_CACHE_SIZE = 32


@dataclass(frozen=True)
class CacheStats:
    """Counters of an :class:`EmbeddingCache`.

    Attributes
    ----------
    hits : lookups answered from the cache
    misses : lookups that found nothing (including those that then computed)
    computed : values computed by :meth:`EmbeddingCache.get_or_compute`
    evicted : entries dropped to respect ``maxsize``
    size : entries held now
    maxsize : the size bound
    """

    hits: int
    misses: int
    computed: int
    evicted: int
    size: int
    maxsize: int


class _Pending:
    """A value being computed by one thread; others wait on ``done``."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


def _check_maxsize(maxsize: Any) -> int:
    if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
        raise ValueError(
            f"cache maxsize must be an int >= 1 (number of slice embeddings kept), "
            f"got {maxsize!r}"
        )
    return maxsize


class EmbeddingCache:
    """Least-recently-used mapping of slice keys to embeddings, with a size bound.

    Parameters
    ----------
    maxsize : int, default :data:`DEFAULT_CACHE_SIZE`
        Largest number of entries kept (>= 1). Settable later through
        :attr:`maxsize`; shrinking it evicts the least recently used entries.

    Notes
    -----
    Every method is thread-safe. ``get``, ``get_or_compute`` and ``put`` mark
    an entry as most recently used; ``in`` and :meth:`peek` do not.

    Examples
    --------
    >>> cache = EmbeddingCache(maxsize=2)
    >>> cache.put(("img", (0,)), "e0")
    >>> cache.get_or_compute(("img", (1,)), lambda: "e1")
    'e1'
    >>> cache.put(("img", (2,)), "e2")   # evicts (0,), the least recently used
    >>> ("img", (0,)) in cache
    False
    """

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE) -> None:
        self._maxsize = _check_maxsize(maxsize)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._lock = threading.RLock()
        self._hits = 0
        self._misses = 0
        self._computed = 0
        self._evicted = 0

    # ------------------------------------------------------------ size bound
    @property
    def maxsize(self) -> int:
        """Largest number of entries kept; setting it evicts down to the new bound."""
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        value = _check_maxsize(value)
        with self._lock:
            self._maxsize = value
            self._evict()

    def _evict(self) -> None:
        while len(self._data) > self._maxsize:
            self._data.popitem(last=False)
            self._evicted += 1

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.keys())

    def keys(self) -> list[Hashable]:
        """Keys held, least recently used first (a snapshot list)."""
        with self._lock:
            return list(self._data)

    def is_pending(self, key: Hashable) -> bool:
        """True while some thread computes ``key`` in :meth:`get_or_compute`."""
        with self._lock:
            return key in self._pending

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """The value of ``key`` (or ``default``) without changing its recency or the counters."""
        with self._lock:
            return self._data.get(key, default)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value of ``key`` (marked most recently used), or ``default``."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self._hits += 1
                return self._data[key]
            self._misses += 1
            return default

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key`` as the most recently used entry."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self._evict()

    def discard(self, key: Hashable) -> bool:
        """Remove ``key``; returns whether it was there."""
        with self._lock:
            return self._data.pop(key, None) is not None

    def discard_where(self, predicate: Callable[[Hashable], bool]) -> int:
        """Remove every key for which ``predicate(key)`` is true; returns how many."""
        with self._lock:
            doomed = [k for k in self._data if predicate(k)]
            for k in doomed:
                del self._data[k]
            return len(doomed)

    def clear(self) -> None:
        """Remove every entry (computations in flight still finish and store theirs)."""
        with self._lock:
            self._data.clear()

    def stats(self) -> CacheStats:
        """A snapshot of the hit/miss/eviction counters."""
        with self._lock:
            return CacheStats(
                self._hits, self._misses, self._computed, self._evicted,
                len(self._data), self._maxsize,
            )

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """Return the value of ``key``, calling ``compute()`` once if it is missing.

        Parameters
        ----------
        key : hashable
            Cache key.
        compute : callable with no arguments
            Produces the value. Called outside the cache's lock, so slow
            computations do not block other keys. If another thread is already
            computing ``key``, this call waits for that result instead.

        Returns
        -------
        The cached or computed value.

        Raises
        ------
        Exception
            Whatever ``compute`` raised (also re-raised in the threads that
            waited for it); nothing is stored then.
        """
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self._hits += 1
                return self._data[key]
            self._misses += 1
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = _Pending()
                self._pending[key] = pending
        assert pending is not None  # found, or made here
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value
        try:
            value = compute()
        except BaseException as err:
            pending.error = err
            raise
        else:
            pending.value = value
            with self._lock:
                self._computed += 1
                self._data[key] = value
                self._data.move_to_end(key)
                self._evict()
            return value
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.done.set()
