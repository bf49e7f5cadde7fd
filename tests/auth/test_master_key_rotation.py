"""Rotating auth's master key: nothing stored under the old key stops working,
everything moves to the new key, and the old key can then be dropped."""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from empire.auth.v1 import auth_service_pb2 as pb
from services.auth.secrets_box import MasterKey, SealError
from services.auth.settings import AuthSettings, load_settings
from services.auth.signing_keys import seal_context
from services.auth.store import AuthStore
from shared.config import Env, SettingsError
from tests.auth.harness import AuthUnderTest, auth_settings, running_auth
from tests.harness.grpc_errors import error_info


def _new_key() -> tuple[bytes, str]:
    key = secrets.token_bytes(32)
    return key, base64.b64encode(key).decode()


async def _create_api_key(auth: AuthUnderTest) -> pb.CreateApiKeyResponse:
    request = pb.CreateApiKeyRequest(subject="svc-ci", scopes=["secrets:read"])
    return await auth.stub.CreateApiKey(request, metadata=auth.as_admin())


async def _credentials_under(
    database_url: str, master_key_text: str
) -> tuple[AuthSettings, pb.CreateApiKeyResponse, pb.IssueTokenResponse]:
    """An API key and a token with a refresh token, made under one master key."""
    settings = auth_settings(database_url, AUTH_MASTER_KEY=master_key_text)
    async with running_auth(settings) as auth:
        api_key = await _create_api_key(auth)
        issued = await auth.issue(include_refresh_token=True)
    return settings, api_key, issued


async def _exchange(auth: AuthUnderTest, secret: str) -> pb.ExchangeApiKeyResponse:
    return await auth.stub.ExchangeApiKey(pb.ExchangeApiKeyRequest(api_key=secret))


async def _refresh(auth: AuthUnderTest, token: str) -> pb.RefreshTokenResponse:
    return await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=token))


async def _not_under(auth: AuthUnderTest, key: bytes) -> dict[str, int]:
    now_ms = int(time.time() * 1000)
    return await auth.components.store.count_hashes_not_under(
        MasterKey(key).label, now_ms
    )


async def _signing_keys_open_under(database_url: str, key: bytes) -> bool:
    only = MasterKey(key)
    store = await AuthStore.open(database_url)
    try:
        _, rows = await store.fetch_keyring()
    finally:
        await store.close()
    sealed = [row for row in rows if row.sealed_private_key is not None]
    assert sealed
    for row in sealed:
        assert row.sealed_private_key is not None
        try:
            only.open(row.sealed_private_key, seal_context(row.key_id, row.algorithm))
        except SealError:
            return False
    return True


async def test_rotation_keeps_everything_working_and_frees_the_old_key(
    database_url: str,
) -> None:
    old_key, old_text = _new_key()
    new_key, new_text = _new_key()
    before, api_key, issued = await _credentials_under(database_url, old_text)

    # Step 2 of a rotation: the new key is current, the old one still accepted.
    bootstrap = {"AUTH_BOOTSTRAP_API_KEY": before.bootstrap_api_key or ""}
    rotating = auth_settings(
        database_url,
        AUTH_MASTER_KEY=new_text,
        AUTH_ACCEPTED_MASTER_KEYS=old_text,
        **bootstrap,
    )
    async with running_auth(rotating) as auth:
        # Signing keys were re-sealed at start; old tokens verify, new ones sign.
        assert await _signing_keys_open_under(database_url, new_key)
        assert (await auth.verify(issued.access_token)).valid
        assert (await auth.verify((await auth.issue()).access_token)).valid
        # At start, the bootstrap key and api_key were under the old key (the
        # gauge says so until the next prune); the harness's exchange has
        # moved the bootstrap key since.
        gauge = REGISTRY.get_sample_value(
            "empire_auth_hashes_under_accepted_master_keys", {"table": "api_keys"}
        )
        assert gauge == 2
        assert await _not_under(auth, new_key) == {"api_keys": 1, "refresh_tokens": 1}

        exchanged = await _exchange(auth, api_key.secret)
        refreshed = await _refresh(auth, issued.refresh_token)

        assert (await auth.verify(exchanged.access_token)).valid
        assert await _not_under(auth, new_key) == {"api_keys": 0, "refresh_tokens": 0}

    # Step 3: the old key is gone from the configuration.
    after = auth_settings(database_url, AUTH_MASTER_KEY=new_text, **bootstrap)
    async with running_auth(after) as auth:
        assert (await auth.verify(issued.access_token)).valid
        assert (await _exchange(auth, api_key.secret)).access_token
        assert (await _refresh(auth, refreshed.refresh_token)).access_token


async def test_a_replica_still_on_the_old_key_reads_what_the_new_key_wrote(
    database_url: str,
) -> None:
    """Step 1 of a rotation rolls out the new key as accepted everywhere, so
    replicas still sealing under the old key and replicas already on the new
    one understand each other while step 2 rolls out."""
    old_key, old_text = _new_key()
    _, new_text = _new_key()
    step_one = auth_settings(
        database_url, AUTH_MASTER_KEY=old_text, AUTH_ACCEPTED_MASTER_KEYS=new_text
    )
    bootstrap = {"AUTH_BOOTSTRAP_API_KEY": step_one.bootstrap_api_key or ""}
    step_two = auth_settings(
        database_url,
        AUTH_MASTER_KEY=new_text,
        AUTH_ACCEPTED_MASTER_KEYS=old_text,
        **bootstrap,
    )
    async with running_auth(step_one) as lagging:
        api_key = await _create_api_key(lagging)
        async with running_auth(step_two) as ahead:
            # `ahead` re-seals and rehashes under the new key as it goes ...
            await _exchange(ahead, api_key.secret)
            issued = await ahead.issue(include_refresh_token=True)
            assert await _not_under(ahead, old_key) == {
                "api_keys": 2,  # the bootstrap key and api_key, both moved
                "refresh_tokens": 1,
            }
            # ... and the replica still on the old key keeps up.
            await lagging.components.keyring.reload()
            assert (await lagging.verify(issued.access_token)).valid
            assert (await _exchange(lagging, api_key.secret)).access_token
            assert (await _refresh(lagging, issued.refresh_token)).access_token


async def test_hashes_from_before_labels_are_labelled_at_start(
    database_url: str,
) -> None:
    settings = auth_settings(database_url)
    async with running_auth(settings) as auth:
        api_key = await _create_api_key(auth)
        issued = await auth.issue(include_refresh_token=True)
        database = auth.components.store.database
        # What rows written before hashes carried a label look like.
        for table, column in (
            ("api_keys", "secret_hash"),
            ("refresh_tokens", "token_hash"),
        ):
            rows = await database.fetchall(f"SELECT {column} FROM {table}")
            for (stored,) in rows:
                await database.execute(
                    f"UPDATE {table} SET {column} = %s WHERE {column} = %s",
                    (stored.split("$", 1)[1], stored),
                )
        assert not await database.fetchall(
            "SELECT secret_hash FROM api_keys WHERE secret_hash LIKE %s", ("%$%",)
        )

    async with running_auth(settings) as auth:
        key = settings.master_key
        assert key is not None
        assert await _not_under(auth, key) == {"api_keys": 0, "refresh_tokens": 0}
        assert (await _exchange(auth, api_key.secret)).access_token
        assert (await _refresh(auth, issued.refresh_token)).access_token


async def test_without_the_old_key_its_api_keys_are_simply_invalid(
    database_url: str,
) -> None:
    old_key, old_text = _new_key()
    _, new_text = _new_key()
    _, api_key, _ = await _credentials_under(database_url, old_text)
    # Moved everything but this API key to the new key, then dropped the old.
    rotating = auth_settings(
        database_url, AUTH_MASTER_KEY=new_text, AUTH_ACCEPTED_MASTER_KEYS=old_text
    )
    async with running_auth(rotating) as auth:
        assert (await _not_under(auth, old_key))["api_keys"] >= 1
    after = auth_settings(database_url, AUTH_MASTER_KEY=new_text)
    async with running_auth(after) as auth:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _exchange(auth, api_key.secret)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(raised.value).reason == "INVALID_API_KEY"


def test_seals_and_hashes_use_only_the_current_key() -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    rotating = MasterKey(new, [old, new, old])  # repeats are ignored
    sealed_by_old = MasterKey(old).seal(b"private", b"kid")

    assert rotating.open_noting_key(sealed_by_old, b"kid") == (b"private", False)
    assert MasterKey(old, [new]).open(rotating.seal(b"p", b"kid"), b"kid") == b"p"
    with pytest.raises(SealError):
        MasterKey(new).open(sealed_by_old, b"kid")
    with pytest.raises(SealError):
        rotating.open(sealed_by_old, b"another kid")

    old_hash = MasterKey(old).hash_api_key("esk_x")
    assert rotating.hash_api_key("esk_x").startswith(MasterKey(new).label + "$")
    assert rotating.match_api_key("esk_x", old_hash).matches
    assert not rotating.match_api_key("esk_x", old_hash).up_to_date
    assert not rotating.match_api_key("esk_y", old_hash).matches
    assert not MasterKey(new).match_api_key("esk_x", old_hash).matches
    current = rotating.hash_api_key("esk_x")
    assert rotating.match_api_key("esk_x", current).up_to_date
    bare = current.split("$", 1)[1]
    assert rotating.match_api_key("esk_x", bare).matches
    assert not rotating.match_api_key("esk_x", bare).up_to_date

    candidates = rotating.refresh_token_hashes("esr_x")
    assert candidates[0] == rotating.hash_refresh_token("esr_x")
    assert MasterKey(old).hash_refresh_token("esr_x") in candidates


def test_accepted_keys_come_from_a_list_or_a_file_and_are_never_echoed(
    tmp_path: Path,
) -> None:
    one, one_text = _new_key()
    two, two_text = _new_key()
    base = {"EMPIRE_AUTH_MASTER_KEY": _new_key()[1]}
    listed = {**base, "EMPIRE_AUTH_ACCEPTED_MASTER_KEYS": f"{one_text}, {two_text}"}
    assert load_settings(Env(listed)).accepted_master_keys == (one, two)

    path = tmp_path / "accepted"
    path.write_text(f"{one_text}\n\n{two_text}\n")
    from_file = {**base, "EMPIRE_AUTH_ACCEPTED_MASTER_KEYS_FILE": str(path)}
    assert load_settings(Env(from_file)).accepted_master_keys == (one, two)

    short = base64.b64encode(b"k" * 31).decode()
    bad = {**base, "EMPIRE_AUTH_ACCEPTED_MASTER_KEYS": f"{one_text},{short}"}
    with pytest.raises(SettingsError, match="EMPIRE_AUTH_ACCEPTED_MASTER_KEYS") as err:
        load_settings(Env(bad))
    assert short not in str(err.value) and one_text not in str(err.value)
