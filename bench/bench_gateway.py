"""The gateway's cost: vault's GetSecret called directly and through Envoy.

Auth and vault run as processes on their embedded SQLite stores (the store is
the same on both paths, so it cancels out of the ratio); Envoy runs on the
config the tests use. Each path is measured in the same run, under the same
load: the rows give the gateway's throughput as a share of the direct call's,
and the latency it adds one call at a time.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import tempfile
from pathlib import Path

import aiohttp
import grpc

from bench.bench_echo import CEILING
from bench.loadgen import alternate
from bench.report import Report
from empire.vault.v1 import vault_service_pb2, vault_service_pb2_grpc
from services.auth.api_key_format import generate_api_key
from tests.e2e.calls import rest
from tests.e2e.stack import Stack, new_master_key

KEY_ID = "bench/gateway"


def _start_stack(workdir: Path) -> tuple[Stack, str]:
    """Auth, vault and the gateway; returns the stack and an admin token."""
    bootstrap = generate_api_key().secret
    stack = Stack(
        workdir=workdir,
        common_env={"EMPIRE_HOST": "127.0.0.1", "EMPIRE_LOG_LEVEL": "WARNING"},
    )
    auth = stack.add_service(
        "auth",
        {
            "EMPIRE_AUTH_DATABASE_URL": f"sqlite:///{workdir / 'auth.db'}",
            "EMPIRE_AUTH_MASTER_KEY": new_master_key(),
            "EMPIRE_AUTH_DEVELOPMENT": "false",
            "EMPIRE_AUTH_BOOTSTRAP_API_KEY": bootstrap,
        },
    )
    stack.common_env["EMPIRE_JWKS_URL"] = (
        f"http://127.0.0.1:{auth.http_port}/.well-known/jwks.json"
    )
    stack.add_service(
        "vault",
        {
            "EMPIRE_VAULT_DATABASE_URL": f"sqlite:///{workdir / 'vault.db'}",
            "EMPIRE_VAULT_MASTER_KEY": new_master_key(),
        },
    )
    try:
        stack.start_services("auth", "vault")
        gateway = stack.start_gateway(stack.gateway_config())
        gateway.wait_until_ready(("auth", "vault"))
        answer = rest(
            gateway.base_url,
            "POST",
            "/api/empire-security/api-keys:exchange",
            {"api_key": bootstrap},
        )
        assert answer.status == 200, answer.body
    except BaseException:
        stack.stop()
        raise
    return stack, str(answer.body["access_token"])


async def run(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as directory:
        stack, token = await asyncio.to_thread(_start_stack, Path(directory))
        try:
            await _measure(report, stack, token)
        finally:
            await asyncio.to_thread(stack.stop)


async def _measure(report: Report, stack: Stack, token: str) -> None:
    assert stack.gateway is not None
    metadata = (("authorization", f"Bearer {token}"),)
    request = vault_service_pb2.GetSecretRequest(key_id=KEY_ID)
    headers = {"authorization": f"Bearer {token}"}
    rest_url = f"{stack.gateway.base_url}/api/empire-security/secrets/{KEY_ID}"

    async with (
        grpc.aio.insecure_channel(stack.services["vault"].target) as direct_channel,
        grpc.aio.insecure_channel(stack.gateway.target) as gateway_channel,
        aiohttp.ClientSession() as session,
    ):
        direct = vault_service_pb2_grpc.VaultServiceStub(direct_channel)
        via_gateway = vault_service_pb2_grpc.VaultServiceStub(gateway_channel)
        await direct.PutSecret(
            vault_service_pb2.PutSecretRequest(
                key_id=KEY_ID, value=secrets.token_bytes(32)
            ),
            metadata=metadata,
        )

        async def over_rest() -> None:
            async with session.get(rest_url, headers=headers) as response:
                body = await response.json()
                assert response.status == 200 and base64.b64decode(body["value"])

        def direct_call():  # noqa: ANN202 - a grpc.aio call object
            return direct.GetSecret(request, metadata=metadata)

        def gateway_call():  # noqa: ANN202
            return via_gateway.GetSecret(request, metadata=metadata)

        results = await report.echoes.beside(
            {"direct": direct_call, "grpc": gateway_call, "rest": over_rest}
        )
        base = results["direct"]
        report.row(
            "vault GetSecret, direct gRPC (32 in flight)", base, results[CEILING]
        )
        report.row(
            "vault GetSecret via Envoy, gRPC",
            results["grpc"],
            base,
            baseline_name="direct gRPC",
        )
        report.row(
            "vault GetSecret via Envoy, REST/JSON",
            results["rest"],
            base,
            baseline_name="direct gRPC",
        )

        serial = await alternate(
            {"direct": direct_call, "gateway": gateway_call}, concurrency=1
        )
        serial_direct, serial_gateway = serial["direct"], serial["gateway"]
        report.row("vault GetSecret, direct gRPC (1 in flight)", serial_direct)
        ratio = serial_gateway.p50_ms / serial_direct.p50_ms
        report.row(
            "vault GetSecret via Envoy, gRPC (1 in flight)",
            serial_gateway,
            note=f"p50 latency {ratio:.2f}x direct",
        )
        report.latency_row(
            "gateway added latency (1 in flight)",
            serial_gateway,
            serial_direct,
            baseline_name="direct gRPC",
        )
