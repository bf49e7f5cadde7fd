"""Two figures taken in alternating slices, so both see the same machine.

On a shared machine the load drifts from second to second; a figure measured
a minute after its baseline compares two different machines. Here the two
calls take turns in short slices (same concurrency, same warm-up), and each
side's latencies are pooled over all its slices before the percentiles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bench.loadgen import SCALE, Result, summarize

Call = Callable[[], Awaitable[object]]

SLICES = 4  # per side
SLICE_S = 0.5
WARMUP_S = 0.5


async def alternate(
    first: Call,
    second: Call,
    *,
    concurrency: int,
    slices: int = SLICES,
    slice_s: float = SLICE_S,
    warmup_s: float = WARMUP_S,
) -> tuple[Result, Result]:
    """`first` and `second` from `concurrency` workers each, turn by turn."""
    slice_s, warmup_s = slice_s * SCALE, warmup_s * SCALE
    calls = (first, second)
    for call in calls:
        await _window(call, concurrency, warmup_s, [], [0])
    latencies: tuple[list[float], list[float]] = ([], [])
    errors = ([0], [0])
    seconds = [0.0, 0.0]
    for _ in range(slices):
        for side, call in enumerate(calls):
            seconds[side] += await _window(
                call, concurrency, slice_s, latencies[side], errors[side]
            )
    return (
        summarize(latencies[0], errors[0][0], seconds[0]),
        summarize(latencies[1], errors[1][0], seconds[1]),
    )


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
