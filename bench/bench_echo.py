"""The baselines every service row is compared with: a plain grpc.aio echo (the
ceiling) and the same echo through our shared runtime, kept running all run."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from bench.loadgen import Call, Result, alternate
from bench.report import Report
from empire.echo.v1 import echo_service_pb2 as echo_pb2
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from shared.clients import bearer
from shared.echo import PlainEchoServicer, echo_service
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer

CEILING = "ceiling"
RUNTIME = "runtime echo"


@dataclass(frozen=True)
class Echoes:
    """Calls to both echo servers, to interleave with any figure."""

    ceiling: Call
    runtime: Call

    async def beside(
        self, calls: dict[str, Call], *, concurrency: int = 32, runtime: bool = False
    ) -> dict[str, Result]:
        """`calls` taken in turns with the ceiling (and the runtime echo).

        The results hold `CEILING` (and `RUNTIME`) beside the callers' names.
        """
        baselines = {CEILING: self.ceiling}
        if runtime:
            baselines[RUNTIME] = self.runtime
        return await alternate(calls | baselines, concurrency=concurrency)


@contextlib.asynccontextmanager
async def running_echoes() -> AsyncIterator[Echoes]:
    """Both echo servers in this event loop, as the services under test are."""
    plain = grpc.aio.server()
    echo_grpc.add_EchoServiceServicer_to_server(PlainEchoServicer(), plain)
    port = plain.add_insecure_port("127.0.0.1:0")
    await plain.start()
    issuer = LocalIssuer()
    settings = test_server_settings("auth")
    request = echo_pb2.EchoRequest(message="ping")
    metadata = (bearer(issuer.token(["echo:call"])),)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain_channel,
            serve(echo_service(), settings, issuer.verifier()) as runtime,
            runtime.channel() as runtime_channel,
        ):
            plain_stub = echo_grpc.EchoServiceStub(plain_channel)
            runtime_stub = echo_grpc.EchoServiceStub(runtime_channel)
            yield Echoes(
                ceiling=lambda: plain_stub.Echo(request),
                runtime=lambda: runtime_stub.Echo(request, metadata=metadata),
            )
    finally:
        await plain.stop(0)


async def run(report: Report) -> None:
    results = await report.echoes.beside({}, runtime=True)
    report.row("echo ceiling: plain grpc.aio, no interceptor", results[CEILING])
    report.row(
        "echo through the shared runtime (JWT, log, metrics)",
        results[RUNTIME],
        results[CEILING],
    )
