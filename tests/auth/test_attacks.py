"""Attacks on token verification, each refused with the right reason."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from empire.auth.v1 import auth_service_pb2 as pb
from services.auth.jwks_http import JWKS_PATH
from shared.authn import HttpJwksSource, JwksTokenVerifier
from shared.clients import bearer
from shared.errors import Unauthenticated
from tests.auth.forge import (
    HOSTILE_HEADER_NAMES,
    attacker_server,
    b64url,
    compact,
    hostile_header,
    with_raw_header,
)
from tests.auth.harness import AuthUnderTest, auth_settings, running_auth
from tests.harness.grpc_errors import error_info

Reason = pb.VerifyTokenResponse.Reason
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture
def auth(shared_auth: AuthUnderTest) -> AuthUnderTest:
    return shared_auth


def _claims(auth: AuthUnderTest, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": auth.settings.issuer,
        "aud": auth.settings.audience,
        "sub": "mallory",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": secrets.token_hex(8),
        "scope": "*",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def _signed_by_auth(
    auth: AuthUnderTest, header: dict | None = None, **claims: Any
) -> str:
    """A token signed with auth's own current key, with any claims we like."""
    key = auth.components.keyring.current
    assert isinstance(key.private_key, ed25519.Ed25519PrivateKey)
    full_header = {"alg": "EdDSA", "kid": key.key_id, **(header or {})}
    return compact(full_header, _claims(auth, **claims), key.private_key.sign)


async def _reason(auth: AuthUnderTest, token: str) -> int:
    verdict = await auth.verify(token)
    assert not verdict.valid
    return verdict.reason


@pytest.fixture
async def jku_server() -> AsyncIterator[tuple[str, list[str]]]:
    """An attacker's web server; the list records every request it gets."""
    async with attacker_server() as server:
        yield server


async def test_honest_token_passes_so_the_forger_is_sound(auth: AuthUnderTest) -> None:
    assert (await auth.verify(_signed_by_auth(auth))).valid


async def test_alg_none_is_refused(auth: AuthUnderTest) -> None:
    kid = auth.components.keyring.current.key_id
    for alg in ("none", "None", "NONE"):
        token = compact({"alg": alg, "kid": kid}, _claims(auth))
        assert await _reason(auth, token) == Reason.DISALLOWED_ALGORITHM


async def test_hs256_signed_with_the_public_key_is_refused(auth: AuthUnderTest) -> None:
    key = auth.components.keyring.current
    assert key.private_key is not None
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, key.public_jwk["x"].encode()):
        token = compact(
            {"alg": "HS256", "kid": key.key_id},
            _claims(auth),
            lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest(),
        )
        assert await _reason(auth, token) == Reason.DISALLOWED_ALGORITHM


async def test_another_asymmetric_alg_than_the_keys_is_refused(
    auth: AuthUnderTest,
) -> None:
    kid = auth.components.keyring.current.key_id
    token = compact({"alg": "ES256", "kid": kid}, _claims(auth), lambda _: bytes(64))
    assert await _reason(auth, token) == Reason.DISALLOWED_ALGORITHM


@pytest.mark.parametrize(
    "kid",
    [
        "no-such-key",
        "../../../../etc/passwd",
        "' OR '1'='1' --",
        "x'; DROP TABLE signing_keys; --",
        "k" * 5000,
        "",
    ],
)
async def test_unknown_or_injected_kid_is_refused(
    auth: AuthUnderTest, kid: str
) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    token = compact({"alg": "EdDSA", "kid": kid}, _claims(auth), attacker.sign)

    assert await _reason(auth, token) == Reason.UNKNOWN_KEY
    # The injected SQL did nothing: the keyring is intact and still signs.
    issued = await auth.issue()
    assert (await auth.verify(issued.access_token)).valid


@pytest.mark.parametrize("name", HOSTILE_HEADER_NAMES)
async def test_header_of_the_wrong_shape_is_malformed(
    auth: AuthUnderTest, name: str
) -> None:
    kid = auth.components.keyring.current.key_id
    token = with_raw_header(hostile_header(name, kid), _signed_by_auth(auth))
    assert await _reason(auth, token) == Reason.MALFORMED


@pytest.mark.parametrize("name", ["alg-list", "nested-arrays", "not-utf8"])
async def test_bearer_token_of_the_wrong_shape_is_unauthenticated(
    auth: AuthUnderTest, name: str
) -> None:
    """Auth's own interceptor refuses it too, rather than failing INTERNAL."""
    kid = auth.components.keyring.current.key_id
    token = with_raw_header(hostile_header(name, kid), _signed_by_auth(auth))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.ListSigningKeys(
            pb.ListSigningKeysRequest(), metadata=(bearer(token),)
        )

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(raised.value).reason == "MALFORMED"


async def test_non_string_kid_is_refused(auth: AuthUnderTest) -> None:
    token = compact({"alg": "EdDSA", "kid": 7}, _claims(auth), lambda _: bytes(64))
    assert await _reason(auth, token) == Reason.UNKNOWN_KEY


async def test_jku_x5u_and_jwk_headers_are_never_followed(
    auth: AuthUnderTest, jku_server: tuple[str, list[str]]
) -> None:
    url, hits = jku_server
    attacker = ed25519.Ed25519PrivateKey.generate()
    raw = attacker.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    embedded = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": "evil"}
    our_kid = auth.components.keyring.current.key_id

    pointing_elsewhere = [
        {"alg": "EdDSA", "kid": "evil", "jku": url},
        {"alg": "EdDSA", "kid": "evil", "x5u": url},
        {"alg": "EdDSA", "kid": "evil", "jwk": embedded},
    ]
    for header in pointing_elsewhere:
        token = compact(header, _claims(auth), attacker.sign)
        assert await _reason(auth, token) == Reason.UNKNOWN_KEY

    # Naming our kid while carrying the attacker's key: the signature is
    # checked against our key only.
    for extra in ({"jku": url}, {"x5u": url}, {"jwk": embedded}):
        token = compact(
            {"alg": "EdDSA", "kid": our_kid, **extra}, _claims(auth), attacker.sign
        )
        assert await _reason(auth, token) == Reason.BAD_SIGNATURE
    assert hits == []


@pytest.mark.parametrize("missing", ["exp", "iat", "iss", "aud", "sub", "jti"])
async def test_token_missing_a_required_claim_is_refused(
    auth: AuthUnderTest, missing: str
) -> None:
    token = _signed_by_auth(auth, **{missing: None})
    assert await _reason(auth, token) == Reason.MISSING_CLAIM


async def test_expired_token_is_refused(auth: AuthUnderTest) -> None:
    past = int(time.time()) - 3600
    token = _signed_by_auth(auth, iat=past - 300, nbf=past - 300, exp=past)
    assert await _reason(auth, token) == Reason.EXPIRED


async def test_small_clock_skew_is_tolerated(auth: AuthUnderTest) -> None:
    leeway = int(auth.settings.leeway_seconds)
    now = int(time.time())
    within = _signed_by_auth(auth, exp=now - leeway // 2, iat=now - 600, nbf=now - 600)
    assert (await auth.verify(within)).valid


async def test_not_yet_valid_token_is_refused(auth: AuthUnderTest) -> None:
    future = int(time.time()) + 3600
    assert (
        await _reason(auth, _signed_by_auth(auth, nbf=future)) == Reason.NOT_YET_VALID
    )
    assert (
        await _reason(auth, _signed_by_auth(auth, iat=future)) == Reason.NOT_YET_VALID
    )


async def test_wrong_issuer_is_refused(auth: AuthUnderTest) -> None:
    token = _signed_by_auth(auth, iss="https://evil.example")
    assert await _reason(auth, token) == Reason.WRONG_ISSUER


async def test_wrong_audience_is_refused(auth: AuthUnderTest) -> None:
    token = _signed_by_auth(auth, aud="someone-else")
    assert await _reason(auth, token) == Reason.WRONG_AUDIENCE


async def test_unknown_crit_header_is_refused(auth: AuthUnderTest) -> None:
    token = _signed_by_auth(auth, header={"crit": ["exp-policy"], "exp-policy": 1})
    assert await _reason(auth, token) == Reason.UNSUPPORTED_CRITICAL_HEADER


async def test_es256_signature_of_zeros_is_refused(sqlite_url: str) -> None:
    settings = auth_settings(sqlite_url, AUTH_KEY_ALGORITHM="ES256")
    async with running_auth(settings) as auth:
        issued = await auth.issue()
        head, body, _ = issued.access_token.split(".")

        zeros = f"{head}.{body}.{b64url(bytes(64))}"

        assert await _reason(auth, zeros) == Reason.BAD_SIGNATURE
        assert (await auth.verify(issued.access_token)).valid


async def test_truncated_padded_and_garbled_tokens_are_refused(
    auth: AuthUnderTest,
) -> None:
    token = (await auth.issue()).access_token
    head, body, signature = token.split(".")

    assert await _reason(auth, token[:-10]) == Reason.BAD_SIGNATURE
    assert await _reason(auth, f"{head}.{body}") == Reason.MALFORMED
    assert await _reason(auth, token + "=") == Reason.MALFORMED
    assert await _reason(auth, f"{head}==.{body}.{signature}") == Reason.MALFORMED
    assert await _reason(auth, f"{head}.{body}!.{signature}") == Reason.MALFORMED
    assert await _reason(auth, token + ".extra") == Reason.MALFORMED
    assert await _reason(auth, "not a token at all") == Reason.MALFORMED
    assert (
        await _reason(auth, f"{b64url(b'[1,2]')}.{body}.{signature}")
        == Reason.MALFORMED
    )
    # A body tampered with (one claim changed) no longer matches the signature.
    tampered = _signed_by_auth(auth).split(".")
    forged_body = b64url(b'{"sub":"admin"}')
    assert (
        await _reason(auth, f"{tampered[0]}.{forged_body}.{tampered[2]}")
        == Reason.BAD_SIGNATURE
    )


async def test_huge_token_is_refused_before_parsing(auth: AuthUnderTest) -> None:
    token = (await auth.issue()).access_token
    huge = token + "A" * (2 * 1024 * 1024)
    assert await _reason(auth, huge) == Reason.TOO_LARGE


async def test_random_kids_do_not_flood_the_keyring_store(auth: AuthUnderTest) -> None:
    keyring = auth.components.keyring
    before = keyring.reload_count
    attacker = ed25519.Ed25519PrivateKey.generate()

    for _ in range(50):
        kid = secrets.token_hex(8)
        token = compact({"alg": "EdDSA", "kid": kid}, _claims(auth), attacker.sign)
        assert await _reason(auth, token) == Reason.UNKNOWN_KEY

    # The rate limit allows one reload per second; the loop takes far less
    # than the 3 seconds that would be needed for more than 3.
    assert keyring.reload_count - before <= 3


async def test_random_kids_do_not_flood_the_jwks_endpoint(auth: AuthUnderTest) -> None:
    url = f"http://127.0.0.1:{auth.server.http_port}{JWKS_PATH}"
    verifier = JwksTokenVerifier(
        HttpJwksSource(url),
        issuer=auth.settings.issuer,
        audience=auth.settings.audience,
        refetch_interval_seconds=60.0,
    )
    attacker = ed25519.Ed25519PrivateKey.generate()

    for _ in range(50):
        token = compact(
            {"alg": "EdDSA", "kid": secrets.token_hex(8)}, _claims(auth), attacker.sign
        )
        with pytest.raises(Unauthenticated):
            await verifier.verify(token)

    assert verifier.fetch_count == 1
    # And the one fetch served real keys: an honest token verifies.
    honest = (await auth.issue()).access_token
    assert (await verifier.verify(honest)).subject == "alice"


# Other kinds of JWT auth's key could sign (RFC 8725 section 3.11), and near
# misses of an access token's `typ`; None leaves the header out.
WRONG_TYPES = [
    None,
    "JWT",
    "jwt",
    "id+jwt",
    "dpop+jwt",
    "application/jwt",
    "at+jwt ",
    "at+jwt; charset=utf-8",
    "",
]


@pytest.mark.parametrize("typ", WRONG_TYPES, ids=repr)
async def test_correctly_signed_token_of_another_type_is_refused(
    auth: AuthUnderTest, typ: str | None
) -> None:
    token = _signed_by_auth(auth, header={"typ": typ})
    assert await _reason(auth, token) == Reason.WRONG_TYPE

    # Auth's own interceptor refuses it as a bearer token too.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.ListSigningKeys(
            pb.ListSigningKeysRequest(), metadata=(bearer(token),)
        )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(raised.value).reason == "WRONG_TYPE"


@pytest.mark.parametrize(
    "typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"]
)
async def test_access_token_type_passes_in_either_form_and_any_case(
    auth: AuthUnderTest, typ: str
) -> None:
    assert (await auth.verify(_signed_by_auth(auth, header={"typ": typ}))).valid


async def test_other_services_refuse_a_token_of_another_type_signed_by_auth(
    auth: AuthUnderTest,
) -> None:
    """The shared verifier, over auth's real JWKS, agrees with VerifyToken."""
    url = f"http://127.0.0.1:{auth.server.http_port}{JWKS_PATH}"
    verifier = JwksTokenVerifier(
        HttpJwksSource(url),
        issuer=auth.settings.issuer,
        audience=auth.settings.audience,
    )
    honest = (await auth.issue()).access_token
    assert (await verifier.verify(honest)).subject == "alice"

    for typ in (None, "JWT", "id+jwt"):
        with pytest.raises(Unauthenticated) as raised:
            await verifier.verify(_signed_by_auth(auth, header={"typ": typ}))
        assert raised.value.reason == "WRONG_TYPE"
