"""`make bench`: the echo ceiling first, then every service's rows as ratios to it."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time

from bench import bench_echo
from bench.report import Report
from shared.logs import configure_logging

SERVICE_BENCHES = ("auth", "vault", "cache", "llm", "gateway", "peers")


async def main(selected: list[str]) -> None:
    # Access lines are formatted and written as in production, but to
    # /dev/null: their cost is measured, the terminal's is not.
    configure_logging("INFO", open(os.devnull, "w"))  # noqa: SIM115
    report = Report()
    report.ceiling = await bench_echo.measure_ceiling()  # type: ignore[assignment]
    report.row("echo ceiling: plain grpc.aio, no interceptor", report.ceiling)
    await bench_echo.run(report)

    for name in SERVICE_BENCHES:
        if selected and name not in selected:
            continue
        try:
            module = importlib.import_module(f"bench.bench_{name}")
        except ModuleNotFoundError as error:
            if error.name != f"bench.bench_{name}":
                raise
            print(f"-- {name}: no benchmark yet", flush=True)
            continue
        started = time.perf_counter()
        await module.run(report)
        print(f"-- {name} done in {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
