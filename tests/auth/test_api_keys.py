"""API keys: the format, shown once, stored hashed, listed, revoked, exchanged."""

from __future__ import annotations

import asyncio
import zlib

import grpc
import pytest
from google.protobuf import duration_pb2

from empire.auth.v1 import auth_service_pb2 as pb
from services.auth.api_key_format import (
    format_api_key,
    generate_api_key,
    parse_api_key,
)
from services.auth.store import AuthQueries, IssuedTokenRow
from shared.clients import bearer
from tests.auth.harness import AuthUnderTest
from tests.harness.grpc_errors import bad_request, error_info

Reason = pb.VerifyTokenResponse.Reason


async def _create(auth: AuthUnderTest, **fields: object) -> pb.CreateApiKeyResponse:
    fields.setdefault("subject", "svc-llm")
    request = pb.CreateApiKeyRequest(**fields)  # type: ignore[arg-type]
    return await auth.stub.CreateApiKey(request, metadata=auth.as_admin())


async def _exchange(
    auth: AuthUnderTest, secret: str, **fields: object
) -> pb.ExchangeApiKeyResponse:
    request = pb.ExchangeApiKeyRequest(api_key=secret, **fields)  # type: ignore[arg-type]
    return await auth.stub.ExchangeApiKey(request)


async def _exchange_refused(auth: AuthUnderTest, secret: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _exchange(auth, secret)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return error_info(raised.value).reason


def test_key_format_has_prefix_id_and_checksum() -> None:
    key = generate_api_key()
    prefix, key_id, rest = key.secret.split("_")

    assert prefix == "esk"
    assert key_id == key.api_key_id and len(key_id) == 12
    assert len(rest) == 38
    assert parse_api_key(key.secret) == key
    # One changed character breaks the checksum; so does a swapped checksum.
    flipped = (
        key.secret[:-8] + ("A" if key.secret[-8] != "A" else "B") + key.secret[-7:]
    )
    assert parse_api_key(flipped) is None
    assert parse_api_key(key.secret[:-6] + "000000") is None
    assert zlib.crc32(key.secret.encode())  # the key is plain ASCII


async def test_created_key_is_shown_once_and_stored_hashed(auth: AuthUnderTest) -> None:
    created = await _create(auth, display_name="llm", scopes=["secrets:read:llm/"])

    assert parse_api_key(created.secret) is not None
    assert created.api_key.api_key_id in created.secret
    assert created.api_key.state == pb.ApiKey.ACTIVE
    rows = await auth.components.store.database.fetchall("SELECT * FROM api_keys")
    body = created.secret.split("_")[2]
    assert all(created.secret not in str(row) and body not in str(row) for row in rows)

    listing = await auth.stub.ListApiKeys(
        pb.ListApiKeysRequest(), metadata=auth.as_admin()
    )
    assert created.secret not in str(listing)
    assert body not in str(listing)
    assert created.api_key.api_key_id in {key.api_key_id for key in listing.api_keys}


async def test_exchange_gives_a_short_lived_token_with_the_keys_scopes(
    auth: AuthUnderTest,
) -> None:
    created = await _create(auth, scopes=["secrets:read:llm/", "cache:use"])

    exchanged = await _exchange(auth, created.secret)

    verdict = await auth.verify(exchanged.access_token)
    assert verdict.valid and verdict.subject == "svc-llm"
    assert sorted(verdict.scopes) == ["cache:use", "secrets:read:llm/"]
    lifetime = verdict.expire_time.seconds - verdict.issue_time.seconds
    assert lifetime == auth.settings.exchange_token_ttl_seconds
    assert verdict.claims["api_key_id"] == created.api_key.api_key_id


async def test_exchange_can_narrow_but_not_widen(auth: AuthUnderTest) -> None:
    created = await _create(auth, scopes=["secrets:read"])

    narrowed = await _exchange(auth, created.secret, scopes=["secrets:read:llm/"])
    assert list(narrowed.scopes) == ["secrets:read:llm/"]

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _exchange(auth, created.secret, scopes=["secrets:write"])
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(raised.value).reason == "SCOPE_EXCEEDS_API_KEY"


async def test_narrowed_exchange_keeps_only_the_roles_it_still_holds(
    auth: AuthUnderTest,
) -> None:
    created = await _create(auth, roles=["admin"])

    whole = await auth.verify((await _exchange(auth, created.secret)).access_token)
    narrowed = await _exchange(auth, created.secret, scopes=["secrets:read"])
    verdict = await auth.verify(narrowed.access_token)

    assert list(whole.roles) == ["admin"]
    assert list(verdict.scopes) == ["secrets:read"]
    assert list(verdict.roles) == []


async def test_bad_keys_are_refused_without_saying_why_beyond_invalid(
    auth: AuthUnderTest,
) -> None:
    created = await _create(auth)
    unknown = generate_api_key().secret  # well formed, never stored
    # Well formed, right id and checksum, wrong random body.
    wrong_body = format_api_key(created.api_key.api_key_id, "x" * 32)

    assert await _exchange_refused(auth, unknown) == "INVALID_API_KEY"
    assert await _exchange_refused(auth, "esk_garbage") == "INVALID_API_KEY"
    assert await _exchange_refused(auth, wrong_body) == "INVALID_API_KEY"


async def test_revoked_key_cannot_be_exchanged_and_its_tokens_die(
    auth: AuthUnderTest,
) -> None:
    created = await _create(auth, scopes=["cache:use"])
    exchanged = await _exchange(auth, created.secret)

    revoked = await auth.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(api_key_id=created.api_key.api_key_id),
        metadata=auth.as_admin(),
    )

    assert revoked.api_key.state == pb.ApiKey.REVOKED
    assert await _exchange_refused(auth, created.secret) == "API_KEY_REVOKED"
    assert (await auth.verify(exchanged.access_token)).reason == Reason.REVOKED


async def test_expired_key_cannot_be_exchanged(auth: AuthUnderTest) -> None:
    created = await _create(auth, ttl=duration_pb2.Duration(seconds=60))
    await auth.components.store.database.execute(
        "UPDATE api_keys SET expires_ms = 1 WHERE api_key_id = %s",
        (created.api_key.api_key_id,),
    )
    assert await _exchange_refused(auth, created.secret) == "API_KEY_EXPIRED"


async def test_revoking_an_unknown_key_is_not_found(auth: AuthUnderTest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.RevokeApiKey(
            pb.RevokeApiKeyRequest(api_key_id="nope"), metadata=auth.as_admin()
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(raised.value).reason == "API_KEY_NOT_FOUND"


async def test_caller_cannot_create_a_key_wider_than_itself(
    auth: AuthUnderTest,
) -> None:
    limited = await auth.issue(scopes=["apikeys:admin", "cache:use"])
    metadata = (bearer(limited.access_token),)

    ok = await auth.stub.CreateApiKey(
        pb.CreateApiKeyRequest(subject="c", scopes=["cache:use"]), metadata=metadata
    )
    assert ok.api_key.creator == "alice"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.CreateApiKey(
            pb.CreateApiKeyRequest(subject="c", roles=["admin"]), metadata=metadata
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_listing_pages_and_hides_inactive_keys(auth: AuthUnderTest) -> None:
    created = [await _create(auth, display_name=f"k{i}") for i in range(5)]
    await auth.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(api_key_id=created[0].api_key.api_key_id),
        metadata=auth.as_admin(),
    )

    async def all_ids(show_inactive: bool) -> list[str]:
        ids, token = [], ""
        while True:
            page = await auth.stub.ListApiKeys(
                pb.ListApiKeysRequest(
                    page_size=2, page_token=token, show_inactive=show_inactive
                ),
                metadata=auth.as_admin(),
            )
            ids += [key.api_key_id for key in page.api_keys]
            token = page.next_page_token
            if not token:
                return ids

    active, everything = await all_ids(False), await all_ids(True)
    # 5 created + the bootstrap admin key, one revoked.
    assert len(everything) == len(set(everything)) == 6
    assert len(active) == 5
    assert created[0].api_key.api_key_id not in active

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.ListApiKeys(
            pb.ListApiKeysRequest(page_token="%%%"), metadata=auth.as_admin()
        )
    assert bad_request(raised.value).field_violations[0].field == "page_token"


async def test_bootstrap_admin_key_holds_every_scope(auth: AuthUnderTest) -> None:
    assert auth.settings.bootstrap_api_key is not None
    exchanged = await _exchange(auth, auth.settings.bootstrap_api_key)
    assert list(exchanged.scopes) == ["*"]
    listing = await auth.stub.ListApiKeys(
        pb.ListApiKeysRequest(), metadata=auth.as_admin()
    )
    bootstrap = [key for key in listing.api_keys if key.subject == "bootstrap-admin"]
    assert len(bootstrap) == 1 and list(bootstrap[0].roles) == ["admin"]


async def test_an_exchange_racing_the_keys_revocation_leaves_no_live_token(
    auth: AuthUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Either the exchange is refused, or the revocation covers its token."""
    created = await _create(auth, scopes=["secrets:read"])
    paused, release = asyncio.Event(), asyncio.Event()
    record_issued = AuthQueries.record_issued

    async def record_after_a_pause(self: AuthQueries, token: IssuedTokenRow) -> None:
        if token.api_key_id is not None and not paused.is_set():
            paused.set()  # the exchange passed its checks and signed
            await release.wait()
        await record_issued(self, token)

    monkeypatch.setattr(AuthQueries, "record_issued", record_after_a_pause)
    exchanging = asyncio.create_task(_exchange(auth, created.secret))
    await paused.wait()
    revoking = asyncio.ensure_future(
        auth.stub.RevokeApiKey(
            pb.RevokeApiKeyRequest(api_key_id=created.api_key.api_key_id),
            metadata=auth.as_admin(),
        )
    )
    # Time for the revocation to finish, if nothing holds it back.
    await asyncio.wait({revoking}, timeout=1.0)
    release.set()

    exchanged = await exchanging
    await revoking

    assert (await auth.verify(exchanged.access_token)).reason == Reason.REVOKED
