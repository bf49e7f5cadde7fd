"""`make bench`: the echo baselines, then every service's rows beside them."""

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
    began = time.perf_counter()
    async with bench_echo.running_echoes() as echoes:
        report = Report(echoes)
        await bench_echo.run(report)
        for name in SERVICE_BENCHES:
            if selected and name not in selected:
                continue
            started = time.perf_counter()
            module = importlib.import_module(f"bench.bench_{name}")
            await module.run(report)
            print(f"-- {name} done in {time.perf_counter() - started:.0f}s", flush=True)
    print(f"-- whole run {time.perf_counter() - began:.0f}s", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
