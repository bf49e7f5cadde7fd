"""The in-process tier: bounded in bytes, with W-TinyLFU admission.

New entries enter a small LRU window; an entry leaving the window joins the
main segmented LRU only if a frequency sketch says it is used more often than
the entry it would push out. One-hit wonders and scans therefore pass through
the window without flushing the hot set, which plain LRU cannot avoid.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# What a Python entry costs beyond its key, value and tags (object headers,
# dict slots, index sets); counted so that the byte bound holds for small values.
ENTRY_OVERHEAD_BYTES = 160
_WINDOW = 0
_PROBATION = 1
_PROTECTED = 2
_HALVE = bytes(value >> 1 for value in range(256))


@dataclass(slots=True)
class L1Entry:
    entry_id: str
    route_id: str
    key: str
    value: bytes
    tags: tuple[str, ...]
    stored_at_ms: int
    fresh_until_ms: int
    expires_at_ms: int
    # Monotonic time this replica stored or loaded the entry; bounds how long
    # it is served while invalidations cannot reach the replica.
    loaded_at: float
    # The shared tier's version of the store (or a local one); a copy is never
    # replaced by an older version.
    version: int = 0
    ttl_seconds: int = 0
    # Digest of the value, for DYNAMIC routes to see whether a refill changed it.
    digest: str = ""
    size: int = 0
    segment: int = _WINDOW

    def __post_init__(self) -> None:
        self.size = (
            len(self.value)
            + len(self.entry_id)
            + sum(len(tag) for tag in self.tags)
            + ENTRY_OVERHEAD_BYTES
        )


class FrequencySketch:
    """A count-min sketch of 4-bit-ish counters that halves itself periodically."""

    def __init__(self, width: int) -> None:
        self._width = 1 << max(10, (width - 1).bit_length())
        self._mask = self._width - 1
        self._table = bytearray(4 * self._width)
        self._additions = 0
        self._sample_size = 10 * self._width

    def _indexes(self, item: str) -> tuple[int, int, int, int]:
        digest = hash(item) & 0xFFFFFFFFFFFFFFFF
        low, high = digest & 0xFFFFFFFF, (digest >> 32) | 1
        mask, width = self._mask, self._width
        return (
            (low + high) & mask,
            width + ((low + 2 * high) & mask),
            2 * width + ((low + 3 * high) & mask),
            3 * width + ((low + 4 * high) & mask),
        )

    def increment(self, item: str) -> None:
        table = self._table
        for index in self._indexes(item):
            if table[index] < 15:
                table[index] += 1
        self._additions += 1
        if self._additions >= self._sample_size:
            # Aging: old popularity fades so the sketch follows a changing workload.
            self._table = bytearray(self._table.translate(_HALVE))
            self._additions //= 2

    def frequency(self, item: str) -> int:
        table = self._table
        return min(table[index] for index in self._indexes(item))


class L1Cache:
    """Byte-bounded map of entry id to entry with W-TinyLFU admission."""

    def __init__(self, max_bytes: int, *, window_fraction: float = 0.01) -> None:
        self.max_bytes = max_bytes
        self._window_max = max(1, int(max_bytes * window_fraction))
        self._main_max = max_bytes - self._window_max
        self._protected_max = int(self._main_max * 0.8)
        self._segments: tuple[OrderedDict[str, L1Entry], ...] = (
            OrderedDict(),
            OrderedDict(),
            OrderedDict(),
        )
        self._segment_bytes = [0, 0, 0]
        self._entries: dict[str, L1Entry] = {}
        self._by_route: dict[str, dict[str, set[str]]] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._sketch = FrequencySketch(max(1024, max_bytes // 512))
        self.evictions = 0
        self._evictions_by_route: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return sum(self._segment_bytes)

    def get(self, entry_id: str, now_ms: int) -> L1Entry | None:
        """The live entry, recording the access; None when absent or expired."""
        self._sketch.increment(entry_id)
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        if entry.expires_at_ms <= now_ms:
            self._remove(entry)
            return None
        self._touch(entry)
        return entry

    def peek(self, entry_id: str) -> L1Entry | None:
        return self._entries.get(entry_id)

    def put(self, entry: L1Entry) -> None:
        old = self._entries.get(entry.entry_id)
        if old is not None:
            self._remove(old)
        if entry.size > self._main_max:
            self._count_eviction(entry)
            return
        self._link(entry, _WINDOW)
        self._index(entry)
        while self._segment_bytes[_WINDOW] > self._window_max:
            _, candidate = self._segments[_WINDOW].popitem(last=False)
            self._segment_bytes[_WINDOW] -= candidate.size
            self._admit(candidate)

    def remove(self, entry_id: str) -> bool:
        entry = self._entries.get(entry_id)
        if entry is None:
            return False
        self._remove(entry)
        return True

    def entry_ids(
        self,
        route_id: str | None,
        key: str | None = None,
        key_prefix: str | None = None,
    ) -> list[str]:
        """Ids of the entries of a route, optionally of one key or key prefix."""
        routes = [route_id] if route_id is not None else list(self._by_route)
        ids: list[str] = []
        for route in routes:
            keys = self._by_route.get(route, {})
            if key is not None:
                ids.extend(keys.get(key, ()))
                continue
            for entry_key, variants in keys.items():
                if key_prefix is None or entry_key.startswith(key_prefix):
                    ids.extend(variants)
        return ids

    def route_evictions(self, route_id: str) -> int:
        """Entries of the route evicted or refused since the start."""
        return self._evictions_by_route.get(route_id, 0)

    def tagged(self, tag: str) -> list[str]:
        return list(self._by_tag.get(tag, ()))

    def clear(self) -> None:
        for segment in self._segments:
            segment.clear()
        self._segment_bytes = [0, 0, 0]
        self._entries.clear()
        self._by_route.clear()
        self._by_tag.clear()

    def _touch(self, entry: L1Entry) -> None:
        segment = entry.segment
        if segment == _PROBATION:
            self._unlink(entry)
            self._link(entry, _PROTECTED)
            while self._segment_bytes[_PROTECTED] > self._protected_max:
                _, demoted = self._segments[_PROTECTED].popitem(last=False)
                self._segment_bytes[_PROTECTED] -= demoted.size
                self._link(demoted, _PROBATION)
        else:
            self._segments[segment].move_to_end(entry.entry_id)

    def _admit(self, candidate: L1Entry) -> None:
        main_bytes = self._segment_bytes[_PROBATION] + self._segment_bytes[_PROTECTED]
        needed = main_bytes + candidate.size - self._main_max
        victims: list[L1Entry] = []
        if needed > 0:
            for segment in (_PROBATION, _PROTECTED):
                for victim in self._segments[segment].values():
                    if needed <= 0:
                        break
                    victims.append(victim)
                    needed -= victim.size
        candidate_frequency = self._sketch.frequency(candidate.entry_id)
        if victims and candidate_frequency <= max(
            self._sketch.frequency(victim.entry_id) for victim in victims
        ):
            self._unindex(candidate)
            del self._entries[candidate.entry_id]
            self._count_eviction(candidate)
            return
        for victim in victims:
            self._remove(victim)
            self._count_eviction(victim)
        self._segments[_PROBATION][candidate.entry_id] = candidate
        self._segment_bytes[_PROBATION] += candidate.size
        candidate.segment = _PROBATION

    def _count_eviction(self, entry: L1Entry) -> None:
        self.evictions += 1
        self._evictions_by_route[entry.route_id] = (
            self._evictions_by_route.get(entry.route_id, 0) + 1
        )

    def _link(self, entry: L1Entry, segment: int) -> None:
        entry.segment = segment
        self._segments[segment][entry.entry_id] = entry
        self._segment_bytes[segment] += entry.size
        self._entries[entry.entry_id] = entry

    def _unlink(self, entry: L1Entry) -> None:
        del self._segments[entry.segment][entry.entry_id]
        self._segment_bytes[entry.segment] -= entry.size

    def _remove(self, entry: L1Entry) -> None:
        self._unlink(entry)
        del self._entries[entry.entry_id]
        self._unindex(entry)

    def _index(self, entry: L1Entry) -> None:
        keys = self._by_route.setdefault(entry.route_id, {})
        keys.setdefault(entry.key, set()).add(entry.entry_id)
        for tag in entry.tags:
            self._by_tag.setdefault(tag, set()).add(entry.entry_id)

    def _unindex(self, entry: L1Entry) -> None:
        keys = self._by_route.get(entry.route_id)
        if keys is not None:
            variants = keys.get(entry.key)
            if variants is not None:
                variants.discard(entry.entry_id)
                if not variants:
                    del keys[entry.key]
            if not keys:
                del self._by_route[entry.route_id]
        for tag in entry.tags:
            tagged = self._by_tag.get(tag)
            if tagged is not None:
                tagged.discard(entry.entry_id)
                if not tagged:
                    del self._by_tag[tag]


class PlainLru:
    """Byte-bounded LRU: the baseline the admission policy is measured against."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0

    def get(self, entry_id: str) -> bool:
        if entry_id in self._entries:
            self._entries.move_to_end(entry_id)
            return True
        return False

    def put(self, entry_id: str, size: int) -> None:
        old = self._entries.pop(entry_id, None)
        if old is not None:
            self._bytes -= old
        self._entries[entry_id] = size
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted
