"""LLM: the service's added latency over a direct `openai` SDK call to the same
fake provider, plain and streamed, with the service in this process and in its
own (`python -m services.llm`, as deployed).

Calls go one at a time, the direct call and the service's in turns, so both
see the same machine; "added" is the difference of their percentiles. LiteLLM
beside the service is `bench/bench_peers.py`'s part.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator

import grpc
from aiohttp import web
from openai import AsyncOpenAI

from bench.llm_calls import (
    KINDS,
    direct_calls,
    fake_provider,
    running_llm,
    service_calls,
    use_fake,
)
from bench.loadgen import alternate
from bench.processes import free_port, stop, wait_for_port
from bench.report import Report
from tests.harness.tokens import LocalIssuer
from tests.llm.harness import LlmClient

START_TIMEOUT_S = 60.0


async def run(report: Report) -> None:
    with fake_provider() as base_url, tempfile.TemporaryDirectory() as directory:
        direct = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
        async with running_llm(base_url, f"sqlite:///{directory}/llm.db") as llm:
            await _rows(report, direct, llm.client, "in process")
        database_url = f"sqlite:///{directory}/llm-process.db"
        async with _service_process(base_url, database_url) as client:
            await _rows(report, direct, client, "own process")
        await direct.close()


async def _rows(
    report: Report, direct: AsyncOpenAI, client: LlmClient, shape: str
) -> None:
    baselines, throughs = direct_calls(direct), service_calls(client)
    for kind, baseline, through in zip(KINDS, baselines, throughs, strict=True):
        results = await alternate(
            {"direct": baseline, "service": through}, concurrency=1
        )
        rpc = "Complete" if kind == "plain" else "StreamComplete"
        report.row(f"llm direct openai SDK, {kind}", results["direct"])
        report.row(
            f"llm {rpc} via service ({shape})",
            results["service"],
            results["direct"],
            baseline_name="direct openai SDK",
        )
        report.latency_row(
            f"llm service ({shape}) added latency, {kind}",
            results["service"],
            results["direct"],
            baseline_name="direct openai SDK",
        )


@contextlib.asynccontextmanager
async def _service_process(
    base_url: str, database_url: str
) -> AsyncIterator[LlmClient]:
    """`python -m services.llm` in its own process, as it is deployed, verifying
    tokens against a JWKS this process serves."""
    issuer = LocalIssuer()

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(issuer.jwks())

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    jwks_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", jwks_port).start()
    port = free_port()
    env = {
        **os.environ,
        "EMPIRE_LLM_PORT": str(port),
        "EMPIRE_LLM_HTTP_PORT": str(free_port()),
        "EMPIRE_LLM_DATABASE_URL": database_url,
        "EMPIRE_LLM_HEALTH_CHECK_INTERVAL_SECONDS": "0",
        "EMPIRE_JWKS_URL": f"http://127.0.0.1:{jwks_port}/jwks",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.llm"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not await asyncio.to_thread(wait_for_port, port, process, START_TIMEOUT_S):
            raise RuntimeError("python -m services.llm did not start")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = LlmClient(channel, issuer)
            await use_fake(client, base_url)
            yield client
    finally:
        await asyncio.to_thread(stop, process)
        await runner.cleanup()
