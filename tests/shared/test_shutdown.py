"""Graceful shutdown: health turns NOT_SERVING first, in-flight RPCs finish."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from empire.echo.v1 import echo_service_pb2 as echo_pb2
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from shared.echo import EchoServicer, echo_service
from shared.server import start_server
from tests.harness.servers import test_server_settings
from tests.harness.tokens import LocalIssuer


class _SlowEcho(EchoServicer):
    async def PublicEcho(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(0.5)
        return echo_pb2.EchoResponse(message=request.message)


async def test_stop_reports_not_serving_then_drains_in_flight_calls(
    issuer: LocalIssuer,
) -> None:
    service = echo_service()
    service.servicers = [(service.servicers[0][0], _SlowEcho())]
    running = await start_server(
        service, test_server_settings("auth"), issuer.verifier()
    )
    channel = running.channel()
    echo = echo_grpc.EchoServiceStub(channel)
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="")
    )
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

    in_flight = asyncio.ensure_future(
        echo.PublicEcho(echo_pb2.EchoRequest(message="x"))
    )
    await asyncio.sleep(0.1)
    stopping = asyncio.ensure_future(running.stop(grace_seconds=1.5))

    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert (await in_flight).message == "x"
    await stopping
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo.PublicEcho(echo_pb2.EchoRequest(message="late"), timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()
