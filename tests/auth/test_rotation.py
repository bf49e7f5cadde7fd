"""Signing keys: publication, safe rotation, retirement, encryption at rest."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest

from empire.auth.v1 import auth_service_pb2 as pb
from empire.echo.v1 import echo_service_pb2 as echo_pb
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from services.auth.app import create_service
from services.auth.jwks_http import JWKS_PATH
from services.auth.keyring import SigningKeyRing
from services.auth.secrets_box import MasterKey
from services.auth.settings import AuthSettings
from services.auth.signing_keys import private_key_bytes
from services.auth.store import AuthStore
from shared.authn import HttpJwksSource, JwksTokenVerifier
from shared.clients import bearer
from shared.echo import echo_service
from tests.auth.forge import compact
from tests.auth.harness import AuthUnderTest, FakeClock, auth_settings, running_auth
from tests.harness.grpc_errors import error_info
from tests.harness.servers import serve, test_server_settings

Reason = pb.VerifyTokenResponse.Reason
State = pb.SigningKey.State


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def auth(database_url: str, clock: FakeClock) -> AsyncIterator[AuthUnderTest]:
    settings = auth_settings(database_url)
    async with running_auth(settings, keyring_clock=clock) as running:
        yield running


async def _fetch_jwks(
    auth: AuthUnderTest, headers: dict[str, str] | None = None
) -> tuple[int, dict, dict[str, str]]:
    url = f"http://127.0.0.1:{auth.server.http_port}{JWKS_PATH}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers or {}) as response:
            body = await response.read()
            document = json.loads(body) if body else {}
            return (
                response.status,
                document,
                {k.lower(): v for k, v in response.headers.items()},
            )


async def _states(auth: AuthUnderTest) -> dict[str, int]:
    listing = await auth.stub.ListSigningKeys(
        pb.ListSigningKeysRequest(show_retired=True), metadata=auth.as_admin()
    )
    return {key.key_id: key.state for key in listing.signing_keys}


def _publication_lead(settings: AuthSettings) -> float:
    """How long a next key is published before it may sign: until every
    replica published it and any key set served without it has expired."""
    return settings.jwks_max_age_seconds + settings.sync_interval_seconds


async def _rotate(
    auth: AuthUnderTest, force: bool = False
) -> pb.RotateSigningKeyResponse:
    return await auth.stub.RotateSigningKey(
        pb.RotateSigningKeyRequest(force=force), metadata=auth.as_admin()
    )


async def test_first_start_publishes_a_current_and_a_next_key(
    auth: AuthUnderTest,
) -> None:
    states = await _states(auth)
    jwks = await auth.stub.GetJwks(pb.GetJwksRequest())

    assert sorted(states.values()) == [State.NEXT, State.CURRENT]
    assert {key.kid for key in jwks.keys} == set(states)
    assert all(key.alg == "EdDSA" and key.use == "sig" for key in jwks.keys)
    assert jwks.cache_max_age.seconds == 60


async def test_jwks_is_served_over_http_with_a_cache_lifetime(
    auth: AuthUnderTest,
) -> None:
    status, document, headers = await _fetch_jwks(auth)
    over_grpc = await auth.stub.GetJwks(pb.GetJwksRequest())
    assert status == 200

    assert {key["kid"] for key in document["keys"]} == {k.kid for k in over_grpc.keys}
    assert "max-age=60" in headers["cache-control"]
    assert all("d" not in key for key in document["keys"])  # no private part

    status, _, _ = await _fetch_jwks(auth, {"If-None-Match": headers["etag"]})
    assert status == 304


async def test_rotation_waits_until_the_next_key_outlived_jwks_caches(
    auth: AuthUnderTest, clock: FakeClock
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _rotate(auth)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(raised.value).reason == "NEXT_KEY_TOO_NEW"

    clock.advance(_publication_lead(auth.settings))
    rotation = await _rotate(auth)

    states = await _states(auth)
    assert states[rotation.current_key.key_id] == State.CURRENT
    assert states[rotation.previous_key.key_id] == State.RETIRING
    assert states[rotation.next_key.key_id] == State.NEXT
    assert (await auth.issue()).key_id == rotation.current_key.key_id


async def test_a_key_signs_only_once_no_replicas_cached_key_set_lacks_it(
    database_url: str, clock: FakeClock
) -> None:
    settings = auth_settings(database_url)
    async with (
        running_auth(settings, keyring_clock=clock) as first,
        running_auth(settings, keyring_clock=clock) as second,
    ):
        clock.advance(_publication_lead(settings))
        fresh = (await _rotate(first)).next_key.key_id

        # The other replica has not synced yet: a gateway fetching from it now
        # caches a key set without the fresh key for the JWKS max-age.
        clock.advance(1)
        _, served, _ = await _fetch_jwks(second)
        assert fresh not in {key["kid"] for key in served["keys"]}
        cached_until = clock.now + settings.jwks_max_age_seconds
        await second.components.maintenance.run_once()

        clock.advance(settings.jwks_max_age_seconds - 1)
        assert clock.now < cached_until
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _rotate(first)
        assert error_info(raised.value).reason == "NEXT_KEY_TOO_NEW"

        clock.advance(settings.sync_interval_seconds)
        assert (await _rotate(first)).current_key.key_id == fresh


async def test_rotation_end_to_end_through_another_services_interceptor(
    auth: AuthUnderTest, clock: FakeClock
) -> None:
    url = f"http://127.0.0.1:{auth.server.http_port}{JWKS_PATH}"
    verifier = JwksTokenVerifier(
        HttpJwksSource(url),
        issuer=auth.settings.issuer,
        audience=auth.settings.audience,
        refetch_interval_seconds=3600,
    )
    async with serve(echo_service(), test_server_settings("auth"), verifier) as echo:
        async with echo.channel() as channel:
            stub = echo_grpc.EchoServiceStub(channel)

            async def echo_as(token: str) -> str:
                reply = await stub.Echo(
                    echo_pb.EchoRequest(message="hi"), metadata=(bearer(token),)
                )
                return reply.caller

            before = (await auth.issue("before", scopes=["echo:call"])).access_token
            assert await echo_as(before) == "before"
            old_key = auth.components.keyring.current
            assert old_key.private_key is not None

            clock.advance(_publication_lead(auth.settings))
            during = (await auth.issue("during", scopes=["echo:call"])).access_token
            await _rotate(auth)
            after = (await auth.issue("after", scopes=["echo:call"])).access_token

            # Every token verifies, and the new key was known before it signed:
            # the verifier never had to fetch the key set again.
            assert [await echo_as(t) for t in (before, during, after)] == [
                "before",
                "during",
                "after",
            ]
            assert verifier.fetch_count == 1

            # Once every token the old key signed has expired, it is retired.
            clock.advance(
                auth.settings.max_token_ttl_seconds
                + auth.settings.sync_interval_seconds
                + auth.settings.leeway_seconds
                + 1
            )
            await auth.components.keyring.maintain()
            await auth.renew_admin_token()
            assert (await _states(auth))[old_key.key_id] == State.RETIRED
            _, document, _ = await _fetch_jwks(auth)
            assert old_key.key_id not in {key["kid"] for key in document["keys"]}

            # A token signed by the retired key (its private half kept by the
            # test, as a thief would) verifies nowhere once verifiers hold the
            # current key set.
            now = int(time.time())
            stolen = compact(
                {"alg": "EdDSA", "kid": old_key.key_id},
                {
                    "iss": auth.settings.issuer,
                    "aud": auth.settings.audience,
                    "sub": "thief",
                    "iat": now,
                    "nbf": now,
                    "exp": now + 300,
                    "jti": "stolen-1",
                    "scope": "echo:call",
                },
                old_key.private_key.sign,  # type: ignore[union-attr]
            )
            await verifier.refresh()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await echo_as(stolen)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error_info(raised.value).reason == "UNKNOWN_KEY"
            assert (await auth.verify(stolen)).reason == Reason.KEY_RETIRED
            assert await echo_as(after) == "after"


async def test_forced_rotation_stops_the_old_key_at_once(
    auth: AuthUnderTest,
) -> None:
    remembered = (await auth.issue()).access_token
    unseen = (await auth.issue()).access_token
    assert (await auth.verify(remembered)).valid  # now a remembered verdict
    old_admin_token = auth.admin_token  # remembered by auth's own interceptor

    rotation = await _rotate(auth, force=True)
    await auth.renew_admin_token()

    assert rotation.previous_key.state == State.RETIRED
    assert (await auth.verify(remembered)).reason == Reason.KEY_RETIRED
    assert (await auth.verify(unseen)).reason == Reason.KEY_RETIRED
    assert (await auth.verify((await auth.issue()).access_token)).valid
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.ListSigningKeys(
            pb.ListSigningKeysRequest(), metadata=(bearer(old_admin_token),)
        )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(raised.value).reason == "KEY_RETIRED"


async def test_keys_rotate_on_schedule(database_url: str, clock: FakeClock) -> None:
    settings = auth_settings(database_url, AUTH_KEY_ROTATION_INTERVAL_SECONDS="3600")
    async with running_auth(settings, keyring_clock=clock) as auth:
        keyring = auth.components.keyring
        first = keyring.current.key_id
        upcoming = keyring.next
        assert upcoming is not None

        await keyring.maintain()
        assert keyring.current.key_id == first

        clock.advance(3600)
        await keyring.maintain()
        assert keyring.current.key_id == upcoming.key_id


async def test_concurrent_rotations_on_two_replicas_promote_once(
    database_url: str, clock: FakeClock
) -> None:
    settings = auth_settings(database_url)
    async with running_auth(settings, keyring_clock=clock) as first:
        async with running_auth(settings, keyring_clock=clock) as second:
            clock.advance(_publication_lead(settings))
            await second.components.keyring.reload()  # its last sync
            rotated = await _rotate(first)

            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await _rotate(second)
            assert raised.value.code() == grpc.StatusCode.ABORTED
            assert error_info(raised.value).reason == "KEYRING_CHANGED"

            # Within a sync interval the lagging replica still signs with the
            # retiring key, which stays published; once it syncs, it signs
            # with the new one.
            lagging = await second.issue()
            assert lagging.key_id == rotated.previous_key.key_id
            assert (await first.verify(lagging.access_token)).valid
            await second.components.keyring.reload()
            assert (await second.issue()).key_id == rotated.current_key.key_id
            assert (await _states(second)) == (await _states(first))


async def test_keys_survive_a_restart_and_are_stored_sealed(sqlite_url: str) -> None:
    settings = auth_settings(sqlite_url)
    async with running_auth(settings) as auth:
        issued = await auth.issue()
        current = auth.components.keyring.current
        assert current.private_key is not None
        raw_private = private_key_bytes(current.private_key)

    store = await AuthStore.open(sqlite_url)
    try:
        _, rows = await store.fetch_keyring()
        sealed = [row.sealed_private_key for row in rows if row.sealed_private_key]
        assert sealed and all(raw_private[-32:] not in blob for blob in sealed)

        wrong_master = SigningKeyRing(
            store, MasterKey(b"\x01" * 32), auth.components.keyring._policy
        )
        with pytest.raises(Exception, match="does not open"):
            await wrong_master.start()
    finally:
        await store.close()

    async with running_auth(settings) as restarted:
        assert (await restarted.verify(issued.access_token)).valid
        assert (await restarted.issue()).key_id == issued.key_id


async def test_rotation_to_another_algorithm(
    auth: AuthUnderTest, clock: FakeClock
) -> None:
    clock.advance(_publication_lead(auth.settings))
    rotation = await auth.stub.RotateSigningKey(
        pb.RotateSigningKeyRequest(algorithm=pb.ES256), metadata=auth.as_admin()
    )
    assert rotation.next_key.algorithm == pb.ES256

    clock.advance(_publication_lead(auth.settings))
    await _rotate(auth)
    issued = await auth.issue()
    verdict = await auth.verify(issued.access_token)
    assert verdict.valid and verdict.key_id == rotation.next_key.key_id


async def test_listing_signing_keys_pages(
    auth: AuthUnderTest, clock: FakeClock
) -> None:
    for _ in range(3):
        clock.advance(_publication_lead(auth.settings))
        await _rotate(auth)

    seen: list[str] = []
    token = ""
    while True:
        page = await auth.stub.ListSigningKeys(
            pb.ListSigningKeysRequest(page_size=2, page_token=token, show_retired=True),
            metadata=auth.as_admin(),
        )
        assert len(page.signing_keys) <= 2
        seen += [key.key_id for key in page.signing_keys]
        token = page.next_page_token
        if not token:
            break

    assert len(seen) == len(set(seen)) == 5


async def test_jwks_needs_no_token_but_rotation_does(auth: AuthUnderTest) -> None:
    assert (await auth.stub.GetJwks(pb.GetJwksRequest())).keys
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.RotateSigningKey(pb.RotateSigningKeyRequest())
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED

    reader = (await auth.issue(scopes=["tokens:verify"])).access_token
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.RotateSigningKey(
            pb.RotateSigningKeyRequest(), metadata=(bearer(reader),)
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_replicas_starting_together_agree_on_one_keyring(
    database_url: str,
) -> None:
    settings = auth_settings(database_url)

    services = await asyncio.gather(*(create_service(settings) for _ in range(3)))
    try:
        keyrings = [s.servicers[0][1].components.keyring for s in services]  # type: ignore[attr-defined]
        await asyncio.gather(*(keyring.reload() for keyring in keyrings))
        assert len({keyring.current.key_id for keyring in keyrings}) == 1
        assert len({keyring.next.key_id for keyring in keyrings}) == 1  # type: ignore[union-attr]
        assert all(len(keyring.jwks()["keys"]) == 2 for keyring in keyrings)
    finally:
        for service in services:
            assert service.on_close is not None
            await service.on_close()


@pytest.mark.parametrize("with_refresh", [False, True], ids=["plain", "refresh"])
async def test_a_replica_that_missed_its_syncs_signs_only_with_a_confirmed_key(
    database_url: str, clock: FakeClock, with_refresh: bool
) -> None:
    """A replica whose syncs failed (a database outage) and that issues once the
    database is back must not sign with a key another replica has demoted:
    those tokens would outlive the old key's publication."""
    settings = auth_settings(database_url)
    async with (
        running_auth(settings, keyring_clock=clock) as first,
        running_auth(settings, keyring_clock=clock) as lagging,
    ):
        clock.advance(_publication_lead(settings))
        rotated = await _rotate(first)
        # The lagging replica has not synced for longer than its interval: its
        # keyring still holds the demoted key as the one that signs.
        demoted = rotated.previous_key.key_id
        assert lagging.components.keyring.current.key_id == demoted

        # (With a refresh token the keyring is read inside the transaction.)
        issued = await lagging.issue(include_refresh_token=with_refresh)

        assert issued.key_id == rotated.current_key.key_id
        assert lagging.components.keyring.current.key_id == issued.key_id


async def test_a_replica_in_sync_signs_without_reading_the_keyring_again(
    auth: AuthUnderTest,
) -> None:
    keyring = auth.components.keyring
    await keyring.reload()
    before = keyring.reload_count

    for _ in range(3):
        await auth.issue()

    assert keyring.reload_count == before
