"""The revocation list every verifier polls: parsing, expiry, outages, refusal."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from shared.authn import JwksTokenVerifier
from shared.errors import Unauthenticated
from shared.revocations import RevocationList, revocations_document
from tests.harness.tokens import LocalIssuer


class FakeAuth:
    """Answers like auth's endpoint: a document, None for 'unchanged', or down."""

    def __init__(self) -> None:
        self.document: Mapping[str, Any] | None = {"revoked": []}
        self.down = False
        self.calls = 0

    async def __call__(self) -> Mapping[str, Any] | None:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError
        return self.document


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_document_lists_ids_with_expiry_in_seconds() -> None:
    document = revocations_document({"b": 5_000_500, "a": 2_000_000})
    assert document == {
        "revoked": [{"jti": "a", "exp": 2001}, {"jti": "b", "exp": 5001}]
    }


async def test_ids_are_kept_for_the_leeway_past_expiry() -> None:
    auth, clock = FakeAuth(), Clock()
    auth.document = {"revoked": [{"jti": "t1", "exp": clock.now + 10}]}
    revocations = RevocationList(auth, poll_seconds=60, leeway_seconds=30, clock=clock)
    await revocations.refresh()
    assert revocations.is_revoked("t1")
    assert not revocations.is_revoked("t2")

    clock.now += 35  # expired, but a verifier still accepts it for 30 s
    auth.document = None  # unchanged since the last fetch
    await revocations.refresh()
    assert revocations.is_revoked("t1")

    clock.now += 10
    await revocations.refresh()
    assert not revocations.is_revoked("t1")


async def test_a_document_adds_to_what_is_known() -> None:
    # Each poll may reach another replica of auth, one that has not yet
    # synced a revocation made on another: what it omits is not undone.
    auth, clock = FakeAuth(), Clock()
    revocations = RevocationList(auth, poll_seconds=60, clock=clock)
    auth.document = {"revoked": [{"jti": "t1", "exp": clock.now + 60}]}
    await revocations.refresh()
    auth.document = {
        "revoked": [{"jti": "t2", "exp": clock.now + 30}, {"jti": 7}, "junk"]
    }
    await revocations.refresh()
    assert revocations.is_revoked("t1")
    assert revocations.is_revoked("t2")
    assert len(revocations) == 2

    clock.now += 45  # t2 has expired, t1 not yet
    await revocations.refresh()
    assert revocations.is_revoked("t1")
    assert not revocations.is_revoked("t2")


async def test_start_fetches_before_it_returns() -> None:
    auth, clock = FakeAuth(), Clock()
    auth.document = {"revoked": [{"jti": "t1", "exp": clock.now + 60}]}
    revocations = RevocationList(auth, poll_seconds=3600, clock=clock)
    await revocations.start()
    try:
        assert revocations.is_revoked("t1")
        assert auth.calls == 1
    finally:
        await revocations.close()


async def test_start_does_not_wait_on_a_silent_auth() -> None:
    class SilentAuth(FakeAuth):
        async def __call__(self) -> Mapping[str, Any] | None:
            self.calls += 1
            if self.calls == 1:
                await asyncio.Event().wait()  # never answers
            return await super().__call__()

    auth, clock = SilentAuth(), Clock()
    auth.document = {"revoked": [{"jti": "t1", "exp": clock.now + 60}]}
    revocations = RevocationList(auth, poll_seconds=0.01, clock=clock)
    await revocations.start(first_fetch_timeout=0.05)
    try:
        assert not revocations.is_revoked("t1")  # started without the list
        await _until(lambda: revocations.is_revoked("t1"))  # and polls on
    finally:
        await revocations.close()


async def test_an_outage_keeps_what_is_known_and_polling_resumes() -> None:
    auth, clock = FakeAuth(), Clock()
    auth.document = {"revoked": [{"jti": "t1", "exp": clock.now + 60}]}
    revocations = RevocationList(auth, poll_seconds=0.01, clock=clock)
    await revocations.start()
    try:
        await _until(lambda: revocations.is_revoked("t1"))
        auth.down = True
        calls = auth.calls
        await _until(lambda: auth.calls > calls + 2)
        assert revocations.is_revoked("t1")

        auth.down = False
        auth.document = {
            "revoked": [
                {"jti": "t1", "exp": clock.now + 60},
                {"jti": "t2", "exp": clock.now + 60},
            ]
        }
        await _until(lambda: revocations.is_revoked("t2"))
    finally:
        await revocations.close()


async def test_a_malformed_document_is_refused() -> None:
    auth = FakeAuth()
    auth.document = {"revoked": "everything"}
    with pytest.raises(ValueError):
        await RevocationList(auth, poll_seconds=60).refresh()


async def test_verifier_refuses_a_revoked_token_even_when_remembered(
    issuer: LocalIssuer,
) -> None:
    auth = FakeAuth()
    revocations = RevocationList(auth, poll_seconds=60)

    async def fetch_jwks() -> dict[str, Any]:
        return issuer.jwks()

    verifier = JwksTokenVerifier(
        fetch_jwks,
        issuer=issuer.issuer,
        audience=issuer.audience,
        revocations=revocations,
    )
    token = issuer.token(scopes=["echo:call"], jti="stolen")
    other = issuer.token(scopes=["echo:call"], jti="fine")
    assert (await verifier.verify(token)).token_id == "stolen"  # now remembered

    auth.document = {"revoked": [{"jti": "stolen", "exp": 2**40}]}
    await revocations.refresh()

    with pytest.raises(Unauthenticated) as raised:
        await verifier.verify(token)
    assert raised.value.reason == "REVOKED"
    assert (await verifier.verify(other)).token_id == "fine"


async def _until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
