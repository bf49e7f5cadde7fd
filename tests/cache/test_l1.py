"""The in-process tier: byte bound, admission against plain LRU, indexes."""

from __future__ import annotations

import itertools
import random

from services.cache.l1 import L1Cache, L1Entry, PlainLru


def entry(ident: str, value: bytes = b"x" * 100, tags: tuple[str, ...] = ()) -> L1Entry:
    return L1Entry(ident, "route", ident, value, tags, 0, 10**13, 10**13, 0.0)


def zipf_trace(keys: int, length: int, exponent: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** exponent for rank in range(keys)]
    ranks = rng.choices(
        range(keys), cum_weights=list(itertools.accumulate(weights)), k=length
    )
    # Shuffle names so popularity does not follow insertion order.
    names = [f"k{i}" for i in range(keys)]
    rng.shuffle(names)
    return [names[rank] for rank in ranks]


def hit_ratios(trace: list[str], max_bytes: int) -> tuple[float, float]:
    tiny, lru = L1Cache(max_bytes), PlainLru(max_bytes)
    tiny_hits = lru_hits = 0
    for ident in trace:
        if tiny.get(ident, 0) is not None:
            tiny_hits += 1
        else:
            tiny.put(entry(ident))
        if lru.get(ident):
            lru_hits += 1
        else:
            lru.put(ident, entry(ident).size)
    return tiny_hits / len(trace), lru_hits / len(trace)


def test_admission_beats_plain_lru_on_a_zipf_trace():
    trace = zipf_trace(keys=20_000, length=80_000, exponent=0.9, seed=7)
    size = entry("k0").size

    tiny, lru = hit_ratios(trace, max_bytes=200 * size)

    print(f"zipf 0.9, 1% of keys fit: W-TinyLFU {tiny:.3f} vs LRU {lru:.3f}")
    assert tiny > lru * 1.1


def test_a_scan_does_not_flush_the_hot_set():
    hot = [f"hot{i}" for i in range(50)]
    cache = L1Cache(100 * entry("hot0").size)
    for _ in range(20):
        for ident in hot:
            if cache.get(ident, 0) is None:
                cache.put(entry(ident))
    for index in range(5000):
        cache.get(f"scan{index}", 0)
        cache.put(entry(f"scan{index}"))

    survivors = sum(cache.get(ident, 0) is not None for ident in hot)
    assert survivors >= 45


def test_byte_bound_holds_with_mixed_sizes():
    cache = L1Cache(64 * 1024)
    rng = random.Random(1)
    for index in range(5000):
        cache.put(entry(f"k{index}", b"v" * rng.randint(1, 4000)))
        assert cache.bytes <= cache.max_bytes

    assert len(cache) > 0


def test_entries_larger_than_the_main_segment_are_refused():
    cache = L1Cache(64 * 1024)
    cache.put(entry("huge", b"v" * 100_000))

    assert cache.get("huge", 0) is None


def test_expired_entries_are_not_returned():
    cache = L1Cache(64 * 1024)
    cache.put(L1Entry("k", "route", "k", b"v", (), 0, 1000, 2000, 0.0))

    assert cache.get("k", 1999) is not None
    assert cache.get("k", 2000) is None
    assert len(cache) == 0


def test_indexes_follow_removal_and_replacement():
    cache = L1Cache(1024 * 1024)
    cache.put(entry("a", tags=("red",)))
    cache.put(entry("b", tags=("red", "blue")))
    cache.put(entry("a", tags=("blue",)))  # replaced without "red"
    cache.remove("b")

    assert cache.tagged("red") == []
    assert cache.tagged("blue") == ["a"]
    assert cache.entry_ids("route", key_prefix="a") == ["a"]
