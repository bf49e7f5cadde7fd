"""JSON log lines and Prometheus metrics, as an operator reads them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request

import grpc

from empire.echo.v1 import echo_service_pb2 as echo_pb2
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from shared.clients import bearer
from shared.echo import echo_service
from shared.logs import JsonFormatter
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer


def test_log_lines_are_json_with_extra_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    try:
        logger.warning("provider %s is down", "openai", extra={"provider": "openai"})
    finally:
        logger.removeHandler(handler)

    line = json.loads(stream.getvalue())
    assert line["severity"] == "WARNING"
    assert line["message"] == "provider openai is down"
    assert line["provider"] == "openai"
    assert line["time"].endswith("Z")


async def test_metrics_endpoint_counts_rpcs_by_code(issuer: LocalIssuer) -> None:
    async with serve(
        echo_service(), test_server_settings("auth"), issuer.verifier()
    ) as run:
        async with run.channel() as channel:
            stub = echo_grpc.EchoServiceStub(channel)
            await stub.Echo(
                echo_pb2.EchoRequest(message="x"),
                metadata=[bearer(issuer.token(["echo:call"]))],
            )
            try:
                await stub.Echo(echo_pb2.EchoRequest(message="x"))
            except grpc.aio.AioRpcError:
                pass
        url = f"http://127.0.0.1:{run.http_port}/metrics"
        body = await asyncio.to_thread(_fetch, url)

    assert 'empire_rpc_total{code="OK",method="Echo",service="echo"}' in body
    assert 'code="UNAUTHENTICATED",method="Echo",service="echo"' in body
    assert "empire_rpc_duration_seconds_bucket" in body


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()
