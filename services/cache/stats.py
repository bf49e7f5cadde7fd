"""Counters and latency percentiles per route, mirrored as Prometheus metrics."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from empire.cache.v1 import cache_service_pb2 as pb

LOOKUPS = Counter(
    "empire_cache_lookups_total",
    "Cache lookups by route, result (hit, stale, miss) and tier (l1, l2, none).",
    ["route", "result", "tier"],
)
LOOKUP_SECONDS = Histogram(
    "empire_cache_lookup_seconds",
    "Time the cache spent answering a lookup, by route.",
    ["route"],
    buckets=(
        0.00005,
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.05,
        0.25,
        1,
    ),
)
EVENTS = Counter(
    "empire_cache_events_total",
    "Lease grants and waits, stores, voided stores and invalidations, by route.",
    ["route", "event"],
)
L1_ENTRIES = Gauge("empire_cache_l1_entries", "Entries in the in-process tier.")
L1_BYTES = Gauge("empire_cache_l1_bytes", "Bytes held by the in-process tier.")
L1_EVICTIONS = Gauge(
    "empire_cache_l1_evictions", "Entries the in-process tier evicted or refused."
)
SHARED_TIER_UP = Gauge(
    "empire_cache_shared_tier_up", "1 while the Redis tier and its subscription work."
)

_LATENCY_SAMPLES = 4096


@dataclass
class RouteCounters:
    hits: int = 0
    stale_hits: int = 0
    misses: int = 0
    l1_hits: int = 0
    l2_hits: int = 0
    lease_waits: int = 0
    leases_granted: int = 0
    stores: int = 0
    voided_stores: int = 0
    latencies: deque[float] = field(
        default_factory=lambda: deque(maxlen=_LATENCY_SAMPLES)
    )


class CacheStats:
    """What GetStats reports: per-route counters since this replica started."""

    def __init__(self) -> None:
        self._routes: dict[str, RouteCounters] = {}
        self._lookup_children: dict[tuple[str, str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def route(self, route_id: str) -> RouteCounters:
        counters = self._routes.get(route_id)
        if counters is None:
            counters = self._routes[route_id] = RouteCounters()
        return counters

    def record_lookup(
        self, route_id: str, result: str, tier: str, seconds: float
    ) -> None:
        counters = self.route(route_id)
        if result == "hit":
            counters.hits += 1
        elif result == "stale":
            counters.stale_hits += 1
        else:
            counters.misses += 1
        if tier == "l1":
            counters.l1_hits += 1
        elif tier == "l2":
            counters.l2_hits += 1
        counters.latencies.append(seconds)
        # Prometheus children are looked up once per label set: labels() is
        # not free on the hot path.
        child = self._lookup_children.get((route_id, result, tier))
        if child is None:
            child = self._lookup_children[(route_id, result, tier)] = LOOKUPS.labels(
                route_id, result, tier
            )
        child.inc()
        histogram = self._latency_children.get(route_id)
        if histogram is None:
            histogram = self._latency_children[route_id] = LOOKUP_SECONDS.labels(
                route_id
            )
        histogram.observe(seconds)

    def record_event(self, route_id: str, event: str) -> None:
        counters = self.route(route_id)
        if event == "lease_wait":
            counters.lease_waits += 1
        elif event == "lease_granted":
            counters.leases_granted += 1
        elif event == "store":
            counters.stores += 1
        elif event == "voided_store":
            counters.voided_stores += 1
        EVENTS.labels(route_id, event).inc()

    def route_ids(self) -> list[str]:
        return sorted(self._routes)

    def to_proto(
        self, route_ids: list[str], entries: int, bytes_: int, evictions: int
    ) -> pb.CacheStats:
        picked = [self._routes[r] for r in route_ids if r in self._routes]
        total = RouteCounters()
        latencies: list[float] = []
        for counters in picked:
            for name in (
                "hits",
                "stale_hits",
                "misses",
                "l1_hits",
                "l2_hits",
                "lease_waits",
                "leases_granted",
                "stores",
                "voided_stores",
            ):
                setattr(total, name, getattr(total, name) + getattr(counters, name))
            latencies.extend(counters.latencies)
        lookups = total.hits + total.stale_hits + total.misses
        latencies.sort()
        return pb.CacheStats(
            hits=total.hits,
            stale_hits=total.stale_hits,
            misses=total.misses,
            hit_ratio=(total.hits + total.stale_hits) / lookups if lookups else 0.0,
            l1_hits=total.l1_hits,
            l2_hits=total.l2_hits,
            entries=entries,
            bytes=bytes_,
            evictions=evictions,
            lease_waits=total.lease_waits,
            leases_granted=total.leases_granted,
            stores=total.stores,
            voided_stores=total.voided_stores,
            lookup_p50_ms=_percentile(latencies, 0.50) * 1000,
            lookup_p95_ms=_percentile(latencies, 0.95) * 1000,
            lookup_p99_ms=_percentile(latencies, 0.99) * 1000,
        )


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
