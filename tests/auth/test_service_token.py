"""`shared.service_token.ApiKeyTokenSource`: exchange once, refresh before expiry."""

from __future__ import annotations

import asyncio

import pytest

from empire.auth.v1 import auth_service_pb2 as pb
from services.auth.api_key_format import generate_api_key
from shared.errors import Unavailable
from shared.service_token import ApiKeyTokenSource
from tests.auth.harness import FakeClock, auth_settings, running_auth


async def test_token_is_exchanged_once_and_refreshed_before_expiry(
    sqlite_url: str,
) -> None:
    clock = FakeClock()
    async with running_auth(auth_settings(sqlite_url)) as auth:
        created = await auth.stub.CreateApiKey(
            pb.CreateApiKeyRequest(subject="svc-llm", scopes=["secrets:read:llm/"]),
            metadata=auth.as_admin(),
        )
        source = ApiKeyTokenSource(auth.server.target, created.secret, clock=clock)
        try:
            tokens = await asyncio.gather(*(source.token() for _ in range(10)))
            assert len(set(tokens)) == 1 and source.exchanges == 1
            verdict = await auth.verify(tokens[0])
            assert verdict.valid and verdict.subject == "svc-llm"

            lifetime = auth.settings.exchange_token_ttl_seconds
            clock.advance(lifetime * 0.5)
            assert await source.token() == tokens[0]

            clock.advance(lifetime * 0.35)  # past 80% of its life
            fresh = await source.token()
            assert fresh != tokens[0] and source.exchanges == 2
        finally:
            await source.close()


async def test_old_token_serves_while_auth_is_down_until_it_expires(
    sqlite_url: str,
) -> None:
    clock = FakeClock()
    async with running_auth(auth_settings(sqlite_url)) as auth:
        secret = auth.settings.bootstrap_api_key
        assert secret is not None
        source = ApiKeyTokenSource(auth.server.target, secret, clock=clock)
        token = await source.token()
        lifetime = auth.settings.exchange_token_ttl_seconds
    try:
        clock.advance(lifetime * 0.9)  # refresh due, auth gone
        assert await source.token() == token

        clock.advance(lifetime * 0.1)
        with pytest.raises(Unavailable) as raised:
            await source.token()
        assert raised.value.reason == "AUTH_UNAVAILABLE"
    finally:
        await source.close()


async def test_refused_key_is_a_dependency_failure_without_the_key(
    sqlite_url: str,
) -> None:
    async with running_auth(auth_settings(sqlite_url)) as auth:
        unknown = generate_api_key().secret
        source = ApiKeyTokenSource(auth.server.target, unknown)
        try:
            with pytest.raises(Unavailable) as raised:
                await source.token()
        finally:
            await source.close()
    assert raised.value.reason == "SERVICE_CREDENTIAL_REJECTED"
    assert unknown not in str(raised.value)
