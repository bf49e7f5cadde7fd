"""Revoking access tokens: by token, by id; denied until expiry, then pruned."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2

from empire.auth.v1 import auth_service_pb2 as pb
from empire.echo.v1 import echo_service_pb2 as echo_pb
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from services.auth.jwks_http import JWKS_PATH
from shared.clients import bearer
from shared.echo import echo_service
from shared.revocations import REVOCATIONS_PATH
from shared.server import default_verifier
from tests.auth.harness import AuthUnderTest, FakeClock, auth_settings, running_auth
from tests.harness.grpc_errors import bad_request, error_info
from tests.harness.servers import serve, test_server_settings

Reason = pb.VerifyTokenResponse.Reason


async def _revoke(auth: AuthUnderTest, **target: str) -> pb.RevokeTokenResponse:
    return await auth.stub.RevokeToken(
        pb.RevokeTokenRequest(**target), metadata=auth.as_admin()
    )


async def test_revoked_token_fails_verification(auth: AuthUnderTest) -> None:
    issued = await auth.issue()
    assert (await auth.verify(issued.access_token)).valid  # now remembered

    revoked = await _revoke(auth, access_token=issued.access_token)

    assert list(revoked.revoked_token_ids) == [issued.token_id]
    assert (await auth.verify(issued.access_token)).reason == Reason.REVOKED
    other = await auth.issue()
    assert (await auth.verify(other.access_token)).valid


async def test_revoke_by_token_id(auth: AuthUnderTest) -> None:
    issued = await auth.issue()

    await _revoke(auth, token_id=issued.token_id)

    assert (await auth.verify(issued.access_token)).reason == Reason.REVOKED


@pytest.mark.parametrize("algorithm", ["RS256", "EdDSA"])
async def test_revoke_by_token_takes_any_token_the_service_issued(
    sqlite_url: str, algorithm: str
) -> None:
    # An RS256 signature alone is 342 characters; claims add up to 4 KiB.
    claims = struct_pb2.Struct()
    claims.update({"team": "t" * 2000})
    async with running_auth(
        auth_settings(sqlite_url, AUTH_KEY_ALGORITHM=algorithm)
    ) as auth:
        issued = await auth.issue(scopes=["secrets:read"], claims=claims)

        revoked = await _revoke(auth, access_token=issued.access_token)

        assert list(revoked.revoked_token_ids) == [issued.token_id]
        assert (await auth.verify(issued.access_token)).reason == Reason.REVOKED


async def test_revoking_an_unknown_id_is_not_found(auth: AuthUnderTest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _revoke(auth, token_id="no-such-token")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(raised.value).reason == "TOKEN_NOT_FOUND"


async def test_revoking_a_foreign_token_is_invalid(auth: AuthUnderTest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _revoke(auth, access_token="a.b.c")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(raised.value).field_violations[0].field == "access_token"


async def test_revocation_reaches_another_replica(database_url: str) -> None:
    settings = auth_settings(database_url)
    async with running_auth(settings) as first, running_auth(settings) as second:
        issued = await first.issue()
        assert (await second.verify(issued.access_token)).valid

        await _revoke(first, token_id=issued.token_id)
        await second.components.maintenance.run_once()

        assert (await second.verify(issued.access_token)).reason == Reason.REVOKED


async def test_denylist_is_pruned_only_after_expiry(auth: AuthUnderTest) -> None:
    issued = await auth.issue()
    await _revoke(auth, token_id=issued.token_id)
    store, denylist = auth.components.store, auth.components.denylist
    expires_ms = issued.expire_time.ToMilliseconds()

    await store.prune_expired(int(time.time() * 1000))
    denylist.prune(int(time.time() * 1000))
    assert await store.revocations_since(0)
    assert denylist.is_revoked(issued.token_id)

    await store.prune_expired(expires_ms + 1)
    denylist.prune(expires_ms + 1)
    assert await store.revocations_since(0) == []
    assert not denylist.is_revoked(issued.token_id)
    assert await store.issued_expiry(issued.token_id) is None


async def test_a_replica_syncing_within_the_leeway_still_denies(
    database_url: str,
) -> None:
    """Verifiers accept a token `leeway` past `exp`; so must its revocation last."""
    settings = auth_settings(database_url, AUTH_MIN_TOKEN_TTL_SECONDS="1")
    assert settings.leeway_seconds >= 30  # far more than this test takes
    async with running_auth(settings) as first, running_auth(settings) as second:
        issued = await first.issue(ttl=duration_pb2.Duration(seconds=1))
        await _revoke(first, token_id=issued.token_id)
        while time.time() <= issued.expire_time.seconds:
            await asyncio.sleep(0.05)

        # The other replica syncs once the token is past `exp`, in the leeway.
        await second.components.maintenance.run_once()

        assert (await second.verify(issued.access_token)).reason == Reason.REVOKED


async def test_maintenance_pass_prunes_the_denylist_and_store_after_expiry(
    database_url: str,
) -> None:
    clock = FakeClock()
    settings = auth_settings(database_url)
    async with running_auth(settings, keyring_clock=clock) as auth:
        short_ttl = duration_pb2.Duration(seconds=settings.min_token_ttl_seconds)
        short = await auth.issue(ttl=short_ttl)
        long = await auth.issue(ttl=duration_pb2.Duration(seconds=3600))
        for issued in (short, long):
            await _revoke(auth, token_id=issued.token_id)
        clock.advance(settings.min_token_ttl_seconds + settings.leeway_seconds + 1)

        # The service's first pass: the prune interval has not been used yet.
        await auth.components.maintenance.run_once()

        store, denylist = auth.components.store, auth.components.denylist
        assert not denylist.is_revoked(short.token_id)
        assert await store.issued_expiry(short.token_id) is None
        assert [row[0] for row in await store.revocations_since(0)] == [long.token_id]
        assert denylist.is_revoked(long.token_id)
        assert await store.issued_expiry(long.token_id) is not None
        assert (await auth.verify(long.access_token)).reason == Reason.REVOKED


async def test_revoke_needs_a_target_and_the_scope(auth: AuthUnderTest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _revoke(auth)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(raised.value).field_violations[0].field == "target"

    reader = (await auth.issue(scopes=["secrets:read"])).access_token
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.RevokeToken(
            pb.RevokeTokenRequest(token_id="x"),
            metadata=(("authorization", f"Bearer {reader}"),),
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_revocation_reaches_other_services_verifiers(
    auth: AuthUnderTest,
) -> None:
    """Another service, verifying locally, refuses a token once auth revoked it."""
    http = f"http://127.0.0.1:{auth.server.http_port}"
    settings = test_server_settings(
        "vault",
        jwks_url=http + JWKS_PATH,
        revocations_url=http + REVOCATIONS_PATH,
        revocation_poll_seconds=0.05,
        token_issuer=auth.settings.issuer,
        token_audience=auth.settings.audience,
    )
    verifier = default_verifier(settings)
    async with serve(echo_service(), settings, verifier) as echo:
        async with echo.channel() as channel:
            stub = echo_grpc.EchoServiceStub(channel)
            kept = await auth.issue("alice", scopes=["echo:call"])
            issued = await auth.issue("mallory", scopes=["echo:call"])
            token = issued.access_token

            async def echo_as(token: str) -> str:
                reply = await stub.Echo(
                    echo_pb.EchoRequest(message="hi"), metadata=(bearer(token),)
                )
                return reply.caller

            assert await echo_as(token) == "mallory"  # verified and remembered
            await _revoke(auth, token_id=issued.token_id)

            refused: grpc.aio.AioRpcError | None = None
            async with asyncio.timeout(10):
                while refused is None:
                    try:
                        await echo_as(token)
                    except grpc.aio.AioRpcError as error:
                        refused = error
                    await asyncio.sleep(0.02)
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error_info(refused).reason == "REVOKED"
            assert await echo_as(kept.access_token) == "alice"

    # A replica starting later refuses the token from its very first call.
    late_verifier = default_verifier(settings)
    async with serve(echo_service(), settings, late_verifier) as late:
        async with late.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await echo_grpc.EchoServiceStub(channel).Echo(
                    echo_pb.EchoRequest(message="hi"), metadata=(bearer(token),)
                )
            assert error_info(raised.value).reason == "REVOKED"


async def test_revocations_document_holds_ids_only_and_revalidates(
    auth: AuthUnderTest,
) -> None:
    issued = await auth.issue()
    await _revoke(auth, token_id=issued.token_id)
    url = f"http://127.0.0.1:{auth.server.http_port}{REVOCATIONS_PATH}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.headers["Cache-Control"] == "no-cache"
            body = await response.read()
            etag = response.headers["ETag"]
        async with session.get(url, headers={"If-None-Match": etag}) as again:
            assert again.status == 304

    document = json.loads(body)
    assert document["revoked"] == [
        {"jti": issued.token_id, "exp": issued.expire_time.seconds + 1}
    ]
    assert issued.access_token.encode() not in body


async def _wait_until_expired(*expire_times: int) -> None:
    """Until every token is past `exp`, while verifiers still accept it (leeway)."""
    while time.time() <= max(expire_times):
        await asyncio.sleep(0.05)


async def test_revoking_an_api_key_denies_its_tokens_still_in_the_leeway(
    database_url: str,
) -> None:
    settings = auth_settings(
        database_url,
        AUTH_MIN_TOKEN_TTL_SECONDS="1",
        AUTH_EXCHANGE_TOKEN_TTL_SECONDS="1",
    )
    assert settings.leeway_seconds >= 30  # far more than this test takes
    async with running_auth(settings) as auth:
        created = await auth.stub.CreateApiKey(
            pb.CreateApiKeyRequest(subject="svc", scopes=["cache:use"]),
            metadata=auth.as_admin(),
        )
        exchanged = await auth.stub.ExchangeApiKey(
            pb.ExchangeApiKeyRequest(api_key=created.secret)
        )
        await _wait_until_expired(exchanged.expire_time.seconds)
        assert (await auth.verify(exchanged.access_token)).valid  # in the leeway

        await auth.stub.RevokeApiKey(
            pb.RevokeApiKeyRequest(api_key_id=created.api_key.api_key_id),
            metadata=auth.as_admin(),
        )

        verdict = await auth.verify(exchanged.access_token)
        assert verdict.reason == Reason.REVOKED


async def test_revoking_a_refresh_family_denies_its_tokens_still_in_the_leeway(
    database_url: str,
) -> None:
    settings = auth_settings(database_url, AUTH_MIN_TOKEN_TTL_SECONDS="1")
    async with running_auth(settings) as auth:
        issued = await auth.issue(
            ttl=duration_pb2.Duration(seconds=1), include_refresh_token=True
        )
        await _wait_until_expired(issued.expire_time.seconds)
        assert (await auth.verify(issued.access_token)).valid  # in the leeway

        revoked = await _revoke(auth, refresh_token=issued.refresh_token)

        assert list(revoked.revoked_token_ids) == [issued.token_id]
        assert (await auth.verify(issued.access_token)).reason == Reason.REVOKED
