"""What the gateway passes to a service: the verified claims, never a client's own.

The upstreams here are recorders that implement one RPC each and keep the
metadata they received; the gateway is the real Envoy on the rendered config.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deploy import render_envoy
from empire.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from empire.vault.v1 import vault_service_pb2, vault_service_pb2_grpc
from tests.e2e.stack import ROOT, Gateway, free_port
from tests.harness.tokens import LocalIssuer

FORGED = base64.urlsafe_b64encode(b'{"sub":"mallory","scope":"*"}').decode()


class RecordingVault(vault_service_pb2_grpc.VaultServiceServicer):
    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    async def GetSecret(self, request: Any, context: Any) -> Any:
        self.metadata.append(dict(context.invocation_metadata()))
        return vault_service_pb2.GetSecretResponse(key_id=request.key_id, version=1)


class RecordingAuth(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    async def GetJwks(self, request: Any, context: Any) -> Any:
        self.metadata.append(dict(context.invocation_metadata()))
        return auth_service_pb2.GetJwksResponse()


def _claims(header: str) -> dict[str, Any]:
    padded = header + "=" * (-len(header) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return claims


async def _grpc_upstream(
    servicer: Any, add_to_server: Any, service: str
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A gRPC server for `servicer` that reports SERVING for `service`."""
    server = grpc.aio.server()
    add_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def _wait_for_jwks(envoy: Gateway) -> None:
    deadline = time.monotonic() + 10
    while envoy.stat("http.gateway.jwt_authn.jwks_fetch_success") == 0:
        assert time.monotonic() < deadline, "the gateway never fetched the JWKS"
        time.sleep(0.05)


@pytest.fixture
async def gateway(tmp_path: Path, issuer: LocalIssuer) -> AsyncIterator[Any]:
    vault, auth = RecordingVault(), RecordingAuth()
    vault_server, vault_port, vault_health = await _grpc_upstream(
        vault,
        vault_service_pb2_grpc.add_VaultServiceServicer_to_server,
        render_envoy.SERVICES["vault"],
    )
    auth_server, auth_port, _ = await _grpc_upstream(
        auth,
        auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
        render_envoy.SERVICES["auth"],
    )

    async def serve_jwks(_: web.Request) -> web.Response:
        return web.json_response(issuer.jwks())

    jwks_app = web.Application()
    jwks_app.router.add_get("/.well-known/jwks.json", serve_jwks)
    runner = web.AppRunner(jwks_app)
    await runner.setup()
    jwks_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", jwks_port).start()

    defaults = render_envoy.GatewayConfig()
    config = replace(
        defaults,
        listen_port=free_port(),
        metrics_port=free_port(),
        admin_port=free_port(),
        upstreams={
            **defaults.upstreams,
            "vault": render_envoy.Upstream("127.0.0.1", vault_port),
            "auth": render_envoy.Upstream("127.0.0.1", auth_port),
        },
        auth_http_port=jwks_port,
        descriptor_path=str(ROOT / "deploy" / "envoy" / "empire.pb"),
        health_check_interval="0.5s",
        health_check_no_traffic_interval="0.5s",
    )
    envoy = Gateway(config, tmp_path).start()
    try:
        # Blocking waits off the loop: the upstreams above must keep answering
        # Envoy's health checks meanwhile.
        await asyncio.to_thread(envoy.wait_until_ready, ("vault", "auth"))
        await asyncio.to_thread(_wait_for_jwks, envoy)
        yield envoy, vault, auth, vault_health
    finally:
        await asyncio.to_thread(envoy.stop)
        await runner.cleanup()
        await vault_server.stop(0)
        await auth_server.stop(0)


async def test_gateway_forwards_the_verified_claims_not_the_clients(
    gateway: Any, issuer: LocalIssuer
) -> None:
    envoy, vault, _, _ = gateway
    token = issuer.token(["secrets:read"], subject="svc-reader")

    async with grpc.aio.insecure_channel(envoy.target) as channel:
        await vault_service_pb2_grpc.VaultServiceStub(channel).GetSecret(
            vault_service_pb2.GetSecretRequest(key_id="a"),
            metadata=(("authorization", f"Bearer {token}"), ("x-jwt-payload", FORGED)),
            timeout=10,
        )

    received = vault.metadata[-1]
    assert received["authorization"] == f"Bearer {token}"
    assert _claims(received["x-jwt-payload"])["sub"] == "svc-reader"


async def test_gateway_drops_a_claims_header_sent_to_a_public_method(
    gateway: Any,
) -> None:
    envoy, _, auth, _ = gateway

    async with grpc.aio.insecure_channel(envoy.target) as channel:
        await auth_service_pb2_grpc.AuthServiceStub(channel).GetJwks(
            auth_service_pb2.GetJwksRequest(),
            metadata=(("x-jwt-payload", FORGED),),
            timeout=10,
        )

    assert auth.metadata, "the public call did not reach auth"
    assert "x-jwt-payload" not in auth.metadata[-1]


async def test_gateway_stops_counting_a_draining_service_as_healthy(
    gateway: Any,
) -> None:
    envoy, _, _, vault_health = gateway
    assert envoy.cluster_healthy("vault")

    # What a service's health servicer says once SIGTERM starts its drain.
    await vault_health.enter_graceful_shutdown()

    deadline = time.monotonic() + 10
    while await asyncio.to_thread(envoy.cluster_healthy, "vault"):
        assert time.monotonic() < deadline, "the gateway still counts vault healthy"
        await asyncio.sleep(0.1)
    assert await asyncio.to_thread(envoy.cluster_healthy, "auth")
