"""A closed-loop load generator: N callers in flight, warm-up, then a fixed window."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# `EMPIRE_BENCH_SCALE=0.2` shortens every window (used by the bench smoke test).
SCALE = float(os.environ.get("EMPIRE_BENCH_SCALE", "1"))


@dataclass(frozen=True)
class Result:
    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


async def measure(
    call: Callable[[], Awaitable[object]],
    *,
    concurrency: int = 32,
    warmup_s: float = 1.0,
    duration_s: float = 3.0,
) -> Result:
    """Run `call` from `concurrency` workers; time only the window after warm-up."""
    warmup_s, duration_s = warmup_s * SCALE, duration_s * SCALE
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    window_start = started + warmup_s
    window_end = window_start + duration_s

    async def worker() -> None:
        nonlocal errors
        while True:
            begin = time.perf_counter()
            if begin >= window_end:
                return
            try:
                await call()
            except Exception:  # noqa: BLE001 - counted, the run goes on
                if begin >= window_start:
                    errors += 1
                continue
            if begin >= window_start:
                latencies.append(time.perf_counter() - begin)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(latencies, errors, duration_s)


async def measure_serial(
    call: Callable[[], Awaitable[object]], *, count: int = 200, warmup: int = 20
) -> Result:
    """One call at a time, for slow or latency-only figures."""
    count = max(10, int(count * SCALE))
    for _ in range(warmup):
        await call()
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        begin = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - begin)
    return summarize(latencies, 0, time.perf_counter() - started)


def summarize(latencies: list[float], errors: int, seconds: float) -> Result:
    ordered = sorted(latencies)

    def percentile(fraction: float) -> float:
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    return Result(len(ordered), errors, seconds, percentile(0.50), percentile(0.99))
