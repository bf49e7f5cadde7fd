"""A PostgreSQL outage: verification keeps working from memory, issuing fails
UNAVAILABLE, and after the outage everything works and nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import grpc
import pytest

from empire.auth.v1 import auth_service_pb2 as pb
from services.auth.jwks_http import JWKS_PATH
from shared.authn import HttpJwksSource, JwksTokenVerifier
from tests.auth.harness import auth_settings, running_auth
from tests.harness.db_fixtures import FaultProxyFactory
from tests.harness.fault_proxy import FaultProxy
from tests.harness.grpc_errors import error_info

pytestmark = pytest.mark.postgres
T = TypeVar("T")


async def _proxied_auth(
    postgres_url: str, fault_proxy: FaultProxyFactory
) -> tuple[FaultProxy, str]:
    parts = urlsplit(postgres_url)
    proxy = await fault_proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    return proxy, proxy.url_for(postgres_url)


async def _unavailable(call: Awaitable[object]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(raised.value).reason == "DATABASE_UNAVAILABLE"


async def _eventually(call: Callable[[], Awaitable[T]], attempts: int = 40) -> T:
    """The first success of `call`, retried while the pool reconnects."""
    for _ in range(attempts - 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.25)
    return await call()


async def test_database_cut_keeps_verification_and_loses_nothing(
    postgres_url: str, fault_proxy: FaultProxyFactory
) -> None:
    proxy, url = await _proxied_auth(postgres_url, fault_proxy)
    settings = auth_settings(url, AUTH_DATABASE_TIMEOUT_SECONDS="1")
    async with running_auth(settings) as auth:
        before = await auth.issue(scopes=["secrets:read"], include_refresh_token=True)
        created = await auth.stub.CreateApiKey(
            pb.CreateApiKeyRequest(subject="svc", scopes=["cache:use"]),
            metadata=auth.as_admin(),
        )
        jwks_url = f"http://127.0.0.1:{auth.server.http_port}{JWKS_PATH}"
        local = JwksTokenVerifier(
            HttpJwksSource(jwks_url),
            issuer=settings.issuer,
            audience=settings.audience,
        )

        proxy.cut()

        assert (await auth.verify(before.access_token)).valid
        assert (await local.verify(before.access_token)).subject == "alice"
        await _unavailable(auth.issue())
        await _unavailable(
            auth.stub.ExchangeApiKey(pb.ExchangeApiKeyRequest(api_key=created.secret))
        )
        await _unavailable(
            auth.stub.RefreshToken(
                pb.RefreshTokenRequest(refresh_token=before.refresh_token)
            )
        )
        await auth.components.maintenance.run_once()  # degrades, does not crash
        assert (await auth.verify(before.access_token)).valid

        proxy.restore()

        after = await _eventually(auth.issue)
        assert (await auth.verify(after.access_token)).valid
        assert (await auth.verify(before.access_token)).valid
        exchanged = await auth.stub.ExchangeApiKey(
            pb.ExchangeApiKeyRequest(api_key=created.secret)
        )
        assert (await auth.verify(exchanged.access_token)).valid
        refreshed = await auth.stub.RefreshToken(
            pb.RefreshTokenRequest(refresh_token=before.refresh_token)
        )
        assert (await auth.verify(refreshed.access_token)).valid


async def test_stalled_database_fails_issuing_within_the_timeout(
    postgres_url: str, fault_proxy: FaultProxyFactory
) -> None:
    proxy, url = await _proxied_auth(postgres_url, fault_proxy)
    settings = auth_settings(url, AUTH_DATABASE_TIMEOUT_SECONDS="0.5")
    async with running_auth(settings) as auth:
        before = await auth.issue()

        proxy.stall()
        await _unavailable(auth.issue())
        assert (await auth.verify(before.access_token)).valid

        proxy.restore()
        after = await _eventually(auth.issue)
        assert (await auth.verify(after.access_token)).valid
