"""Revoking access tokens: by token, by id; denied until expiry, then pruned."""

from __future__ import annotations

import time

import grpc
import pytest

from empire.auth.v1 import auth_service_pb2 as pb
from tests.auth.harness import AuthUnderTest, auth_settings, running_auth
from tests.harness.grpc_errors import bad_request, error_info

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
