"""The auth store, the same tests on PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.auth.store import (
    ApiKeyRow,
    AuthStore,
    FamilyRow,
    IssuedTokenRow,
    KeyRow,
    RefreshTokenRow,
)
from shared.db import UniqueViolation


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuthStore]:
    opened = await AuthStore.open(database_url)
    yield opened
    await opened.close()


def _key(key_id: str, state: str = "next") -> KeyRow:
    return KeyRow(
        key_id=key_id,
        algorithm="EdDSA",
        state=state,
        public_jwk={"kty": "OKP", "kid": key_id},
        sealed_private_key=b"\x00sealed\xff",
        created_ms=1000,
        activated_ms=None,
        deactivated_ms=None,
        retire_ms=None,
    )


def _api_key(api_key_id: str, created_ms: int, **fields: object) -> ApiKeyRow:
    values: dict = {
        "api_key_id": api_key_id,
        "secret_hash": "h-" + api_key_id,
        "display_name": "",
        "subject": "svc",
        "scopes": ("cache:use", "secrets:read:llm/"),
        "roles": (),
        "creator": "admin",
        "created_ms": created_ms,
    }
    values.update(fields)
    return ApiKeyRow(**values)


def _issued(token_id: str, expires_ms: int, **fields: object) -> IssuedTokenRow:
    values: dict = {
        "token_id": token_id,
        "subject": "alice",
        "key_id": "k1",
        "family_id": None,
        "api_key_id": None,
        "issued_ms": 0,
        "expires_ms": expires_ms,
    }
    values.update(fields)
    return IssuedTokenRow(**values)


async def test_migrations_apply_once(database_url: str, store: AuthStore) -> None:
    again = await AuthStore.open(database_url)  # a second replica starting
    try:
        rows = await again.database.fetchall(
            "SELECT version FROM schema_migrations WHERE scope = %s", ("auth",)
        )
        assert [row[0] for row in rows] == [1]
    finally:
        await again.close()


async def test_keyring_version_is_a_compare_and_set(store: AuthStore) -> None:
    version, keys = await store.fetch_keyring()
    assert (version, keys) == (0, [])

    async with store.transaction() as tx:
        assert await tx.claim_keyring_version(0)
        await tx.save_key(_key("k1"))
    assert not await store.claim_keyring_version(0)

    await store.save_key(_key("k1", state="current"))
    version, keys = await store.fetch_keyring()
    assert version == 1
    assert [(k.key_id, k.state) for k in keys] == [("k1", "current")]
    assert keys[0].sealed_private_key == b"\x00sealed\xff"
    assert keys[0].public_jwk == {"kty": "OKP", "kid": "k1"}


async def test_failed_transaction_changes_nothing(store: AuthStore) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.claim_keyring_version(0)
            await tx.save_key(_key("k1"))
            raise RuntimeError("boom")
    assert await store.fetch_keyring() == (0, [])


async def test_issued_tokens_and_revocations(store: AuthStore) -> None:
    await store.record_issued(_issued("t1", 5000, family_id="f1"))
    await store.record_issued(_issued("t2", 9000, api_key_id="ak"))
    await store.record_issued(_issued("t3", 100, family_id="f1"))

    assert await store.issued_expiry("t1") == 5000
    assert await store.issued_expiry("nope") is None
    assert await store.live_tokens_of_family("f1", 1000) == [("t1", 5000)]
    assert await store.live_tokens_of_api_key("ak", 1000) == [("t2", 9000)]

    await store.revoke_tokens([("t1", 5000)], now_ms=2000)
    await store.revoke_tokens([("t1", 5000)], now_ms=3000)  # idempotent
    assert await store.revocations_since(0) == [("t1", 5000, 2000)]
    assert await store.revocations_since(2001) == []

    assert await store.prune_expired(6000) == 3  # t1, t3, and t1's revocation
    assert await store.issued_expiry("t2") == 9000


async def test_refresh_tokens_are_single_use(store: AuthStore) -> None:
    family = FamilyRow(
        family_id="f1",
        subject="alice",
        scopes=("a:b",),
        roles=("reader",),
        audience="aud",
        claims={"tenant": "acme"},
        created_ms=0,
        expires_ms=10_000,
    )
    await store.create_family(family)
    await store.add_refresh_token(RefreshTokenRow("h1", "f1", 0, 5000))

    assert await store.get_family("f1") == family
    assert await store.use_refresh_token("h1", 100)
    assert not await store.use_refresh_token("h1", 200)
    token = await store.get_refresh_token("h1")
    assert token is not None and token.used_ms == 100

    await store.revoke_family("f1", 300)
    revoked = await store.get_family("f1")
    assert revoked is not None and revoked.revoked_ms == 300

    assert await store.prune_expired(20_000) >= 2
    assert await store.get_refresh_token("h1") is None


async def test_api_keys_list_newest_first_with_a_cursor(store: AuthStore) -> None:
    for index in range(5):
        await store.create_api_key(_api_key(f"id{index}", created_ms=100 * index))
    await store.create_api_key(_api_key("old", created_ms=1, revoked_ms=50))
    await store.create_api_key(_api_key("gone", created_ms=2, expires_ms=10))

    first = await store.list_api_keys(2, None, False, now_ms=1000)
    assert [k.api_key_id for k in first] == ["id4", "id3"]
    cursor = (first[-1].created_ms, first[-1].api_key_id)
    rest = await store.list_api_keys(10, cursor, False, now_ms=1000)
    assert [k.api_key_id for k in rest] == ["id2", "id1", "id0"]

    everything = await store.list_api_keys(10, None, True, now_ms=1000)
    assert len(everything) == 7
    assert await store.count_api_keys() == 7

    stored = await store.get_api_key("id1")
    assert stored == _api_key("id1", created_ms=100)


async def test_api_key_ids_are_unique_and_revocation_sticks(store: AuthStore) -> None:
    await store.create_api_key(_api_key("dup", created_ms=1))
    with pytest.raises(UniqueViolation):
        await store.create_api_key(_api_key("dup", created_ms=2))

    await store.revoke_api_key("dup", 500)
    await store.revoke_api_key("dup", 900)  # the first revocation time stays
    revoked = await store.get_api_key("dup")
    assert revoked is not None and revoked.revoked_ms == 500
