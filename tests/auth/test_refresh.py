"""Refresh-token families: rotation, single use, reuse detection, revocation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from empire.auth.v1 import auth_service_pb2 as pb
from services.auth.store import AuthQueries, IssuedTokenRow
from tests.auth.harness import AuthUnderTest, auth_settings, running_auth
from tests.harness.grpc_errors import bad_request, error_info

Reason = pb.VerifyTokenResponse.Reason


@pytest.fixture
async def auth(database_url: str) -> AsyncIterator[AuthUnderTest]:
    # No grace: a second use is always a reuse (the grace test sets its own).
    settings = auth_settings(database_url, AUTH_REFRESH_REUSE_GRACE_SECONDS="0")
    async with running_auth(settings) as running:
        yield running


async def _refresh(auth: AuthUnderTest, token: str) -> pb.RefreshTokenResponse:
    return await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=token))


async def _refused(auth: AuthUnderTest, token: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _refresh(auth, token)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return error_info(raised.value).reason


async def test_refresh_rotates_and_keeps_the_grant(auth: AuthUnderTest) -> None:
    issued = await auth.issue(scopes=["secrets:read"], include_refresh_token=True)
    assert issued.refresh_token.startswith("esr_")

    refreshed = await _refresh(auth, issued.refresh_token)

    assert refreshed.refresh_token != issued.refresh_token
    assert refreshed.access_token != issued.access_token
    verdict = await auth.verify(refreshed.access_token)
    assert verdict.valid and verdict.subject == "alice"
    assert list(verdict.scopes) == ["secrets:read"]
    # The successor works in turn.
    assert (await _refresh(auth, refreshed.refresh_token)).access_token


async def test_refresh_tokens_are_stored_only_hashed(auth: AuthUnderTest) -> None:
    issued = await auth.issue(include_refresh_token=True)
    rows = await auth.components.store.database.fetchall(
        "SELECT token_hash FROM refresh_tokens"
    )
    assert rows and all(issued.refresh_token not in str(row) for row in rows)
    secret_part = issued.refresh_token.removeprefix("esr_")
    assert all(secret_part not in str(row) for row in rows)


async def test_reuse_after_grace_revokes_the_whole_family(auth: AuthUnderTest) -> None:
    issued = await auth.issue(include_refresh_token=True)
    child = await _refresh(auth, issued.refresh_token)
    # A replay in the very millisecond of the first use is still within a
    # grace of 0 ms; date the first use a second back so this one is after it.
    await auth.components.store.database.execute(
        "UPDATE refresh_tokens SET used_ms = used_ms - 1000 WHERE used_ms IS NOT NULL"
    )

    # The first token leaked and is replayed: the family dies.
    assert await _refused(auth, issued.refresh_token) == "REFRESH_TOKEN_REUSED"

    assert await _refused(auth, child.refresh_token) == "REFRESH_TOKEN_REVOKED"
    for token in (issued.access_token, child.access_token):
        assert (await auth.verify(token)).reason == Reason.REVOKED


async def test_reuse_within_grace_is_honoured(database_url: str) -> None:
    settings = auth_settings(database_url, AUTH_REFRESH_REUSE_GRACE_SECONDS="60")
    async with running_auth(settings) as auth:
        issued = await auth.issue(include_refresh_token=True)

        # Two tabs refresh with the same token at once: both succeed.
        first, second = await asyncio.gather(
            _refresh(auth, issued.refresh_token), _refresh(auth, issued.refresh_token)
        )

        assert first.refresh_token != second.refresh_token
        assert (await auth.verify(first.access_token)).valid
        assert (await auth.verify(second.access_token)).valid


async def test_unknown_and_malformed_refresh_tokens_are_refused(
    auth: AuthUnderTest,
) -> None:
    assert await _refused(auth, "esr_" + "A" * 43) == "REFRESH_TOKEN_INVALID"
    assert await _refused(auth, "not-a-refresh-token") == "REFRESH_TOKEN_INVALID"

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _refresh(auth, "")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(raised.value).field_violations[0].field == "refresh_token"


async def test_expired_refresh_token_is_refused(database_url: str) -> None:
    settings = auth_settings(database_url, AUTH_REFRESH_TOKEN_TTL_SECONDS="60")
    async with running_auth(settings) as auth:
        issued = await auth.issue(include_refresh_token=True)
        await auth.components.store.database.execute(
            "UPDATE refresh_tokens SET expires_ms = 1"
        )
        assert await _refused(auth, issued.refresh_token) == "REFRESH_TOKEN_EXPIRED"


async def test_revoking_a_refresh_token_revokes_its_family(auth: AuthUnderTest) -> None:
    issued = await auth.issue(include_refresh_token=True)
    child = await _refresh(auth, issued.refresh_token)

    revoked = await auth.stub.RevokeToken(
        pb.RevokeTokenRequest(refresh_token=child.refresh_token),
        metadata=auth.as_admin(),
    )

    assert revoked.refresh_family_id
    assert set(revoked.revoked_token_ids) == {issued.token_id, child.token_id}
    assert await _refused(auth, child.refresh_token) == "REFRESH_TOKEN_REVOKED"
    assert (await auth.verify(child.access_token)).reason == Reason.REVOKED


@pytest.mark.parametrize(
    "refresh_token", ["not-a-refresh-token", "esr_" + "A" * 43], ids=["bad", "unknown"]
)
async def test_revoking_a_refresh_token_never_issued_is_a_bad_field(
    auth: AuthUnderTest, refresh_token: str
) -> None:
    # The caller's bearer token is fine: UNAUTHENTICATED would blame it.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.RevokeToken(
            pb.RevokeTokenRequest(refresh_token=refresh_token),
            metadata=auth.as_admin(),
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).reason == "REFRESH_TOKEN_INVALID"
    assert bad_request(raised.value).field_violations[0].field == "refresh_token"


async def test_a_refresh_racing_its_familys_revocation_leaves_no_live_token(
    auth: AuthUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logout (revoking the family) while a thief refreshes the same family:
    either the refresh is refused, or the revocation covers what it issued."""
    issued = await auth.issue(include_refresh_token=True)
    paused, release = asyncio.Event(), asyncio.Event()
    record_issued = AuthQueries.record_issued

    async def record_after_a_pause(self: AuthQueries, token: IssuedTokenRow) -> None:
        if token.family_id is not None and not paused.is_set():
            paused.set()  # the refresh passed its checks and signed
            await release.wait()
        await record_issued(self, token)

    monkeypatch.setattr(AuthQueries, "record_issued", record_after_a_pause)
    refreshing = asyncio.create_task(_refresh(auth, issued.refresh_token))
    await paused.wait()
    revoking = asyncio.ensure_future(
        auth.stub.RevokeToken(
            pb.RevokeTokenRequest(refresh_token=issued.refresh_token),
            metadata=auth.as_admin(),
        )
    )
    # Time for the revocation to finish, if nothing holds it back.
    await asyncio.wait({revoking}, timeout=1.0)
    release.set()

    refreshed = await refreshing
    revoked = await revoking

    assert refreshed.token_id in revoked.revoked_token_ids
    assert (await auth.verify(refreshed.access_token)).reason == Reason.REVOKED
    assert await _refused(auth, refreshed.refresh_token) == "REFRESH_TOKEN_REVOKED"
