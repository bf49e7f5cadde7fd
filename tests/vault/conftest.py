"""Fixtures for the vault's tests: a running vault over each store, and a client."""

from __future__ import annotations

import base64
import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from empire.vault.v1 import vault_service_pb2 as pb
from empire.vault.v1 import vault_service_pb2_grpc
from services.vault.app import service_for
from services.vault.runtime import VaultRuntime, open_runtime
from services.vault.settings import VaultSettings, load_settings
from shared.config import Env
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer

ADMIN = ("*",)
ROOT = Path(__file__).resolve().parents[2]


def vault_settings(
    database_url: str, master_key: bytes, **overrides: Any
) -> VaultSettings:
    env = Env(
        {
            "EMPIRE_VAULT_DATABASE_URL": database_url,
            "EMPIRE_VAULT_MASTER_KEY": base64.b64encode(master_key).decode(),
        }
    )
    settings = load_settings(env)
    return dataclasses.replace(
        settings, server=test_server_settings("vault"), **overrides
    )


class VaultClient:
    """A stub that signs each call with a token holding the scopes asked for."""

    def __init__(self, channel: grpc.aio.Channel, issuer: LocalIssuer) -> None:
        self.stub = vault_service_pb2_grpc.VaultServiceStub(channel)
        self.issuer = issuer

    def metadata(
        self, scopes: Sequence[str] = ADMIN, subject: str = "tester"
    ) -> tuple[tuple[str, str], ...]:
        token = self.issuer.token(scopes=list(scopes), subject=subject)
        return (("authorization", f"Bearer {token}"),)

    async def call(
        self, method: str, request: Any, scopes: Sequence[str] = ADMIN, **kw: Any
    ) -> Any:
        rpc = getattr(self.stub, method)
        return await rpc(request, metadata=self.metadata(scopes), timeout=20, **kw)

    async def put(
        self, key_id: str, value: bytes, **fields: Any
    ) -> pb.PutSecretResponse:
        return await self.call(
            "PutSecret", pb.PutSecretRequest(key_id=key_id, value=value, **fields)
        )

    async def get(
        self, key_id: str, version: int = 0, **kw: Any
    ) -> pb.GetSecretResponse:
        return await self.call(
            "GetSecret", pb.GetSecretRequest(key_id=key_id, version=version), **kw
        )

    async def status(self) -> pb.GetStatusResponse:
        return await self.call("GetStatus", pb.GetStatusRequest())


@dataclasses.dataclass
class RunningVault:
    client: VaultClient
    settings: VaultSettings
    target: str
    # The served vault's parts, for tests that reach past the API.
    runtime: VaultRuntime


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
async def vault(
    database_url: str, master_key: bytes, issuer: LocalIssuer
) -> AsyncIterator[RunningVault]:
    settings = vault_settings(database_url, master_key)
    async with running_vault(settings, issuer) as running:
        yield running


@pytest.fixture
async def sqlite_vault(
    sqlite_url: str, master_key: bytes, issuer: LocalIssuer
) -> AsyncIterator[RunningVault]:
    """For checks made before the store is touched (input validation, scopes)."""
    async with running_vault(vault_settings(sqlite_url, master_key), issuer) as running:
        yield running


class running_vault:  # noqa: N801 - used like a function
    """`async with running_vault(settings, issuer) as vault:` a served vault."""

    def __init__(self, settings: VaultSettings, issuer: LocalIssuer) -> None:
        self._settings = settings
        self._issuer = issuer

    async def __aenter__(self) -> RunningVault:
        runtime = await open_runtime(self._settings)
        self._serving = serve(
            service_for(runtime), self._settings.server, self._issuer.verifier()
        )
        server = await self._serving.__aenter__()
        self._channel = server.channel()
        return RunningVault(
            VaultClient(self._channel, self._issuer),
            self._settings,
            server.target,
            runtime,
        )

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()
        await self._serving.__aexit__(None, None, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def vault_process(
    database_url: str, master_key: bytes, **extra: str
) -> AsyncIterator[
    tuple[subprocess.Popen[bytes], vault_service_pb2_grpc.VaultServiceStub]
]:
    """A vault served by its own process (`python -m services.vault`), so
    that it can be killed, or contend with another replica for real."""
    port = free_port()
    env = {
        **os.environ,
        "EMPIRE_VAULT_DATABASE_URL": database_url,
        "EMPIRE_VAULT_MASTER_KEY": base64.b64encode(master_key).decode(),
        "EMPIRE_VAULT_PORT": str(port),
        "EMPIRE_VAULT_HTTP_PORT": "0",
        # The test signs no tokens: the subprocess runs with authentication off.
        "EMPIRE_AUTH_ENABLED": "false",
        "EMPIRE_LOG_LEVEL": "WARNING",
        **extra,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.vault"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await channel.channel_ready()
        yield process, vault_service_pb2_grpc.VaultServiceStub(channel)
    finally:
        await channel.close()
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=20)
