"""EmbeddingCache: LRU order, size bound, thread safety, compute-once."""

from __future__ import annotations

import threading
import time

import pytest

from napari_sam.cache import DEFAULT_CACHE_SIZE, EmbeddingCache


def test_lru_eviction_order():
    cache = EmbeddingCache(maxsize=3)
    for z in range(3):
        cache.put(("img", (z,)), f"e{z}")
    assert cache.get(("img", (0,))) == "e0"  # 0 becomes most recent
    cache.put(("img", (3,)), "e3")  # evicts 1, the least recently used
    assert cache.keys() == [("img", (2,)), ("img", (0,)), ("img", (3,))]
    assert ("img", (1,)) not in cache
    assert cache.stats().evicted == 1


def test_peek_and_contains_do_not_touch_recency():
    cache = EmbeddingCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.peek("a") == 1 and "a" in cache
    cache.put("c", 3)
    assert "a" not in cache and cache.keys() == ["b", "c"]


def test_maxsize_is_settable_and_shrinking_evicts():
    cache = EmbeddingCache()
    assert cache.maxsize == DEFAULT_CACHE_SIZE
    for i in range(10):
        cache.put(i, i)
    cache.maxsize = 4
    assert cache.keys() == [6, 7, 8, 9]
    cache.maxsize = 8
    cache.put(10, 10)
    assert len(cache) == 5


@pytest.mark.parametrize(
    "bad", [0, -1, 2.5, True, "3"], ids=["zero", "neg", "float", "bool", "str"]
)
def test_invalid_maxsize_names_the_value(bad):
    with pytest.raises(ValueError, match="maxsize must be an int >= 1"):
        EmbeddingCache(maxsize=bad)
    cache = EmbeddingCache(2)
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        cache.maxsize = bad


def test_get_or_compute_computes_once_and_counts():
    cache = EmbeddingCache(4)
    calls = []
    assert cache.get_or_compute("k", lambda: calls.append(1) or "v") == "v"
    assert cache.get_or_compute("k", lambda: calls.append(1) or "w") == "v"
    stats = cache.stats()
    assert calls == [1] and stats.computed == 1 and stats.hits == 1 and stats.misses == 1


def test_concurrent_requests_for_one_key_compute_once():
    cache = EmbeddingCache(4)
    started = threading.Event()
    calls = []

    def slow():
        calls.append(threading.current_thread().name)
        started.set()
        time.sleep(0.2)
        return "emb"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow)))
        for _ in range(4)
    ]
    threads[0].start()
    started.wait(2)
    assert cache.is_pending("k")
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(5)
    assert results == ["emb"] * 4
    assert len(calls) == 1
    assert not cache.is_pending("k")


def test_failed_compute_raises_for_every_waiter_and_stores_nothing():
    cache = EmbeddingCache(4)
    gate = threading.Event()

    def fail():
        gate.wait(2)
        raise RuntimeError("model exploded")

    errors = []

    def worker():
        try:
            cache.get_or_compute("k", fail)
        except RuntimeError as err:
            errors.append(str(err))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join(5)
    assert errors == ["model exploded"] * 3
    assert "k" not in cache and not cache.is_pending("k")
    assert cache.get_or_compute("k", lambda: 7) == 7  # a later call retries


def test_other_keys_are_not_blocked_by_a_slow_compute():
    cache = EmbeddingCache(4)
    gate = threading.Event()
    t = threading.Thread(target=lambda: cache.get_or_compute("slow", lambda: gate.wait(5)))
    t.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    assert cache.get_or_compute("fast", lambda: 1) == 1
    assert time.perf_counter() - t0 < 0.5
    gate.set()
    t.join(5)


def test_discard_where_and_clear():
    cache = EmbeddingCache(8)
    for layer in ("a", "b"):
        for z in range(3):
            cache.put((layer, (z,)), z)
    assert cache.discard_where(lambda k: k[0] == "a") == 3
    assert all(k[0] == "b" for k in cache)
    assert cache.discard(("b", (0,))) and not cache.discard(("b", (0,)))
    cache.clear()
    assert len(cache) == 0


def test_many_threads_respect_the_bound():
    cache = EmbeddingCache(5)

    def hammer(offset):
        for i in range(200):
            key = (offset + i) % 17
            cache.get_or_compute(key, lambda key=key: key * 2)
            assert len(cache) <= 5

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(cache) <= 5
    assert all(cache.peek(k) == k * 2 for k in cache)
