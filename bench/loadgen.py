"""Load generators: a closed loop of N callers, and figures taken turn by turn.

On this shared machine the load drifts from second to second (the same echo
ceiling measures 640 to 1540 rps a minute apart), so a figure and its baseline
are taken with `alternate`: short slices of each in turn, pooled per figure.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# `EMPIRE_BENCH_SCALE=0.2` shortens every window (used by the bench smoke test).
SCALE = float(os.environ.get("EMPIRE_BENCH_SCALE", "1"))

SLICES = 4  # per figure
SLICE_S = 0.5
WARMUP_S = 0.5

Call = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Result:
    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    # Every timed call's seconds, when the caller wants more than two percentiles.
    latencies: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def rps(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float]:
        """The figures without the raw latencies, for JSON between processes."""
        return {
            "calls": self.calls,
            "errors": self.errors,
            "seconds": self.seconds,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


async def alternate(
    calls: dict[str, Call],
    *,
    concurrency: int = 32,
    slices: int = SLICES,
    slice_s: float = SLICE_S,
    warmup_s: float = WARMUP_S,
) -> dict[str, Result]:
    """Each call from `concurrency` workers, in turns of `slice_s` seconds.

    Every call first gets one untimed warm-up turn; then the calls take
    `slices` timed turns each, in order, and each figure pools its turns.
    """
    slice_s, warmup_s = slice_s * SCALE, warmup_s * SCALE
    for call in calls.values():
        await _window(call, concurrency, warmup_s, [], [0])
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    errors = {name: [0] for name in calls}
    seconds = dict.fromkeys(calls, 0.0)
    for _ in range(slices):
        for name, call in calls.items():
            seconds[name] += await _window(
                call, concurrency, slice_s, latencies[name], errors[name]
            )
    return {
        name: summarize(latencies[name], errors[name][0], seconds[name])
        for name in calls
    }


async def measure(
    call: Call,
    *,
    concurrency: int = 32,
    warmup_s: float = 1.0,
    duration_s: float = 3.0,
) -> Result:
    """`call` alone from `concurrency` workers: for figures with no baseline."""
    await _window(call, concurrency, warmup_s * SCALE, [], [0])
    latencies: list[float] = []
    errors = [0]
    seconds = await _window(call, concurrency, duration_s * SCALE, latencies, errors)
    return summarize(latencies, errors[0], seconds)


async def measure_serial(call: Call, *, count: int = 200, warmup: int = 20) -> Result:
    """One call at a time, a fixed number of times, for latency-only figures."""
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


async def _window(
    call: Call,
    concurrency: int,
    duration_s: float,
    latencies: list[float],
    errors: list[int],
) -> float:
    """A closed loop for `duration_s`; every call started in it is timed.

    Returns the seconds until the last call ended (a little over `duration_s`).
    """
    started = time.perf_counter()
    end = started + duration_s

    async def worker() -> None:
        while (begin := time.perf_counter()) < end:
            try:
                await call()
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors[0] += 1
                continue
            latencies.append(time.perf_counter() - begin)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def summarize(latencies: list[float], errors: int, seconds: float) -> Result:
    ordered = sorted(latencies)

    def percentile(fraction: float) -> float:
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    return Result(
        len(ordered),
        errors,
        seconds,
        percentile(0.50),
        percentile(0.99),
        tuple(latencies),
    )
