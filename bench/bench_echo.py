"""The ceiling: a plain grpc.aio echo server, and the same echo through our runtime."""

from __future__ import annotations

import grpc

from bench.loadgen import measure
from bench.report import Report
from empire.echo.v1 import echo_service_pb2 as echo_pb2
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from shared.clients import bearer
from shared.echo import PlainEchoServicer, echo_service
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer


async def measure_ceiling() -> object:
    """A bare grpc.aio server with no interceptor: what every row is compared with."""
    server = grpc.aio.server()
    echo_grpc.add_EchoServiceServicer_to_server(PlainEchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = echo_grpc.EchoServiceStub(channel)
            request = echo_pb2.EchoRequest(message="ping")
            return await measure(lambda: stub.Echo(request))
    finally:
        await server.stop(0)


async def run(report: Report) -> None:
    issuer = LocalIssuer()
    settings = test_server_settings("auth")
    async with serve(echo_service(), settings, issuer.verifier()) as running:
        async with running.channel() as channel:
            stub = echo_grpc.EchoServiceStub(channel)
            request = echo_pb2.EchoRequest(message="ping")
            metadata = (bearer(issuer.token(["echo:call"])),)
            result = await measure(lambda: stub.Echo(request, metadata=metadata))
    report.row(
        "echo through the shared runtime (JWT, log, metrics)", result, report.ceiling
    )
