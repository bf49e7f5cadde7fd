"""Usage recording off the request path, and its summary for GetUsage.

Requests and attempts are queued in memory and written in batches by a
background task, so a completion never waits on the database; a database
outage delays usage rows (they stay queued, up to a bound) but never fails a
completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from services.llm.health import percentile
from services.llm.store import AttemptRecord, LlmStore, RequestRecord

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS = 0.5
MAX_QUEUED = 100_000


class UsageRecorder:
    """Queues usage rows and writes them in the background."""

    def __init__(self, store: LlmStore) -> None:
        self._store = store
        self._requests: list[RequestRecord] = []
        self._attempts: list[AttemptRecord] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="llm-usage-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    def add_request(self, record: RequestRecord) -> None:
        if len(self._requests) < MAX_QUEUED:
            self._requests.append(record)

    def add_attempt(self, record: AttemptRecord) -> None:
        if len(self._attempts) < MAX_QUEUED:
            self._attempts.append(record)

    async def flush(self) -> None:
        """Write everything queued so far."""
        async with self._lock:
            requests, self._requests = self._requests, []
            attempts, self._attempts = self._attempts, []
            if not requests and not attempts:
                return
            try:
                await self._store.record(requests, attempts)
            except Exception:
                # Put the rows back (bounded) and let the next flush retry.
                self._requests[:0] = requests[: MAX_QUEUED - len(self._requests)]
                self._attempts[:0] = attempts[: MAX_QUEUED - len(self._attempts)]
                raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_SECONDS)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - the writer must live on
                logger.warning("usage rows not written yet: %s", type(exc).__name__)


@dataclass
class RouteSummary:
    route: str
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    # Failed attempts on the route's providers by class, hidden ones included.
    attempt_failures: dict[str, int] = field(default_factory=dict)


@dataclass
class ProviderSummary:
    provider_id: str
    route: str
    attempts: int = 0
    successes: int = 0
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class UsageSummary:
    routes: list[RouteSummary]
    providers: list[ProviderSummary]


async def summarize(
    store: LlmStore,
    *,
    start_ms: int = 0,
    end_ms: int | None = None,
    route: str = "",
    provider_id: str = "",
) -> UsageSummary:
    """Usage per route and per provider in [start_ms, end_ms).

    TODO: aggregates in Python over the window's rows; past a few million rows
    per window this wants SQL aggregation and pre-computed latency sketches.
    """
    end_ms = end_ms if end_ms is not None else int(time.time() * 1000) + 1
    requests = await store.requests_between(start_ms, end_ms, route, provider_id)
    attempts = await store.attempts_between(start_ms, end_ms, route, provider_id)
    failures = await store.attempt_failures_between(
        start_ms, end_ms, route, provider_id
    )

    routes: dict[str, RouteSummary] = {}
    for r in requests:
        summary = routes.setdefault(r.route, RouteSummary(r.route))
        summary.requests += 1
        summary.succeeded += int(r.ok)
        summary.failed += int(not r.ok)
        summary.cache_hits += int(r.cached)
        summary.input_tokens += r.input_tokens
        summary.output_tokens += r.output_tokens
        summary.cost_usd += r.cost_usd
        summary.latencies_ms.append(r.latency_ms)
    for route_name, error_class, count in failures:
        summary = routes.setdefault(route_name, RouteSummary(route_name))
        summary.attempt_failures[error_class] = count

    providers: dict[tuple[str, str], ProviderSummary] = {}
    for a in attempts:
        key = (a.route, a.provider_id)
        entry = providers.setdefault(key, ProviderSummary(a.provider_id, a.route))
        entry.attempts += 1
        if a.ok:
            entry.successes += 1
            entry.input_tokens += a.input_tokens
            entry.output_tokens += a.output_tokens
            entry.cost_usd += a.cost_usd
        else:
            entry.failures[a.error_class] += 1
        entry.latencies_ms.append(a.latency_ms)

    return UsageSummary(
        routes=[routes[k] for k in sorted(routes)],
        providers=[providers[k] for k in sorted(providers)],
    )


def latency_percentiles(latencies_ms: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    return percentile(latencies_ms, 0.5), percentile(latencies_ms, 0.99)
