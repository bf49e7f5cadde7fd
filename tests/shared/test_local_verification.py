"""Attacks on the verifier vault, cache and llm use, made through a real service.

The test plays auth: it holds an Ed25519 and a P-256 signing key and publishes
both in the JWKS the echo service's `JwksTokenVerifier` fetches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from empire.echo.v1 import echo_service_pb2 as echo_pb2
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from shared.authn import ACCESS_TOKEN_TYPE, MAX_TOKEN_BYTES, JwksTokenVerifier
from shared.clients import bearer
from shared.echo import echo_service
from shared.errors import Unauthenticated
from tests.auth.forge import (
    HOSTILE_HEADER_NAMES,
    attacker_server,
    b64url,
    compact,
    hostile_header,
    with_raw_header,
)
from tests.harness.grpc_errors import error_info
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import AUDIENCE, ISSUER

pytestmark = pytest.mark.asyncio(loop_scope="module")

LEEWAY_SECONDS = 5


class PublishedKeys:
    """Auth's side: signing keys, and the JWKS document that publishes them."""

    def __init__(self) -> None:
        self.es256 = ec.generate_private_key(ec.SECP256R1())
        self.es256_kid = "es256-" + uuid.uuid4().hex[:8]
        self.fetches = 0
        self.rotate_eddsa()

    def rotate_eddsa(self) -> None:
        """A forced rotation: a new Ed25519 key replaces the old one at once."""
        self.eddsa = ed25519.Ed25519PrivateKey.generate()
        self.eddsa_kid = "eddsa-" + uuid.uuid4().hex[:8]
        self.published = [
            _jwk(jwt.algorithms.OKPAlgorithm, self.eddsa, self.eddsa_kid, "EdDSA"),
            _jwk(jwt.algorithms.ECAlgorithm, self.es256, self.es256_kid, "ES256"),
        ]

    async def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        return {"keys": list(self.published)}

    def verifier(
        self,
        refetch_interval_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> JwksTokenVerifier:
        return JwksTokenVerifier(
            self.fetch,
            issuer=ISSUER,
            audience=AUDIENCE,
            leeway_seconds=LEEWAY_SECONDS,
            refetch_interval_seconds=refetch_interval_seconds,
            clock=clock,
        )

    def eddsa_token(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """Signed with the published Ed25519 key, with any header and claims."""
        full_header = {"alg": "EdDSA", "kid": self.eddsa_kid, **(header or {})}
        return compact(full_header, _claims(**claims), self.eddsa.sign)

    def es256_token(self, typ: str = ACCESS_TOKEN_TYPE, **claims: Any) -> str:
        return jwt.encode(
            _claims(**claims),
            self.es256,
            algorithm="ES256",
            headers={"kid": self.es256_kid, "typ": typ},
        )

    def public_pem(self) -> bytes:
        return self.eddsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _jwk(algorithm: Any, private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    public = json.loads(algorithm.to_jwk(private_key.public_key()))
    return {**public, "kid": kid, "alg": alg, "use": "sig"}


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "mallory",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": secrets.token_hex(8),
        "scope": "echo:call",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


KEYS = PublishedKeys()
ATTACKER = ed25519.Ed25519PrivateKey.generate()
_ATTACKER_JWK = {
    **json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ATTACKER.public_key())),
    "kid": "evil",
    "alg": "EdDSA",
}
# Other kinds of JWT a key may sign (RFC 8725 section 3.11), and near misses.
WRONG_TYPES = [
    "jwt",
    "id+jwt",
    "dpop+jwt",
    "application/jwt",
    "at+jwt ",
    "at+jwt; charset=utf-8",
    "application/at+jwt+x",
    "",
]
_PAST = int(time.time()) - 3600
_FUTURE = int(time.time()) + 3600


def _hmac_with(secret: bytes) -> str:
    return compact(
        {"alg": "HS256", "kid": KEYS.eddsa_kid},
        _claims(),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )


def _with_signature(token: str, signature: bytes) -> str:
    head, body, _ = token.split(".")
    return f"{head}.{body}.{b64url(signature)}"


def _with_body(token: str, claims: dict[str, Any]) -> str:
    """`token` with its claims swapped, its signature kept."""
    head, _, signature = token.split(".")
    return f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"


def _parts(token: str) -> list[str]:
    return token.split(".")


def _attacker_token(header: dict[str, Any]) -> str:
    return compact(header, _claims(), ATTACKER.sign)


# Each attack builds its token when run, so time-bound claims are fresh.
ATTACKS = [
    pytest.param(
        lambda: compact({"alg": "none", "kid": KEYS.eddsa_kid}, _claims()),
        "BAD_ALGORITHM",
        id="alg-none",
    ),
    pytest.param(
        lambda: compact({"alg": "None", "kid": KEYS.eddsa_kid}, _claims()),
        "BAD_ALGORITHM",
        id="alg-None",
    ),
    pytest.param(
        lambda: compact({"kid": KEYS.eddsa_kid}, _claims(), KEYS.eddsa.sign),
        "BAD_ALGORITHM",
        id="alg-missing",
    ),
    pytest.param(
        lambda: _hmac_with(KEYS.public_pem()), "BAD_ALGORITHM", id="hs256-public-pem"
    ),
    pytest.param(
        lambda: _hmac_with(KEYS.published[0]["x"].encode()),
        "BAD_ALGORITHM",
        id="hs256-public-x",
    ),
    pytest.param(
        lambda: compact(
            {"alg": "ES256", "kid": KEYS.eddsa_kid}, _claims(), lambda _: bytes(64)
        ),
        "BAD_ALGORITHM",
        id="es256-on-the-eddsa-key",
    ),
    pytest.param(
        lambda: compact(
            {"alg": "EdDSA", "kid": KEYS.es256_kid}, _claims(), KEYS.eddsa.sign
        ),
        "BAD_ALGORITHM",
        id="eddsa-on-the-es256-key",
    ),
    pytest.param(
        lambda: _attacker_token({"alg": "EdDSA", "kid": "../../../../etc/passwd"}),
        "UNKNOWN_KEY",
        id="kid-path",
    ),
    pytest.param(
        lambda: _attacker_token({"alg": "EdDSA", "kid": "' OR '1'='1' --"}),
        "UNKNOWN_KEY",
        id="kid-sql",
    ),
    pytest.param(
        lambda: _attacker_token({"alg": "EdDSA", "kid": KEYS.eddsa_kid + "' --"}),
        "UNKNOWN_KEY",
        id="kid-sql-after-ours",
    ),
    pytest.param(
        lambda: _attacker_token({"alg": "EdDSA", "kid": "k" * 3000}),
        "UNKNOWN_KEY",
        id="kid-huge",
    ),
    pytest.param(
        lambda: _attacker_token({"alg": "EdDSA", "kid": ""}),
        "UNKNOWN_KEY",
        id="kid-empty",
    ),
    pytest.param(
        lambda: _attacker_token({"alg": "EdDSA", "kid": 7}),
        "UNKNOWN_KEY",
        id="kid-number",
    ),
    pytest.param(
        lambda: _attacker_token({"alg": "EdDSA"}), "UNKNOWN_KEY", id="kid-missing"
    ),
    pytest.param(lambda: KEYS.eddsa_token(exp=None), "MISSING_CLAIM", id="missing-exp"),
    pytest.param(lambda: KEYS.eddsa_token(iat=None), "MISSING_CLAIM", id="missing-iat"),
    pytest.param(lambda: KEYS.eddsa_token(iss=None), "MISSING_CLAIM", id="missing-iss"),
    pytest.param(lambda: KEYS.eddsa_token(aud=None), "MISSING_CLAIM", id="missing-aud"),
    pytest.param(lambda: KEYS.eddsa_token(jti=None), "MISSING_CLAIM", id="missing-jti"),
    pytest.param(
        lambda: KEYS.eddsa_token(nbf=_FUTURE), "NOT_YET_VALID", id="nbf-future"
    ),
    pytest.param(
        lambda: KEYS.eddsa_token(iat=_FUTURE), "NOT_YET_VALID", id="iat-future"
    ),
    pytest.param(
        lambda: KEYS.eddsa_token(iat=_PAST - 300, nbf=_PAST - 300, exp=_PAST),
        "EXPIRED",
        id="expired",
    ),
    pytest.param(
        lambda: KEYS.eddsa_token(iss="https://evil.example"),
        "WRONG_ISSUER",
        id="wrong-issuer",
    ),
    pytest.param(
        lambda: KEYS.eddsa_token(aud="someone-else"),
        "WRONG_AUDIENCE",
        id="wrong-audience",
    ),
    pytest.param(
        lambda: KEYS.eddsa_token({"crit": ["exp-policy"], "exp-policy": 1}),
        "UNSUPPORTED_CRIT",
        id="crit-unknown",
    ),
    pytest.param(
        lambda: KEYS.eddsa_token({"crit": ["b64"], "b64": True}),
        "UNSUPPORTED_CRIT",
        id="crit-b64",
    ),
    pytest.param(
        lambda: KEYS.eddsa_token({"typ": None}), "WRONG_TYPE", id="typ-missing"
    ),
    pytest.param(lambda: KEYS.eddsa_token({"typ": "JWT"}), "WRONG_TYPE", id="typ-JWT"),
    pytest.param(
        lambda: KEYS.es256_token(typ="JWT"), "WRONG_TYPE", id="typ-JWT-from-pyjwt"
    ),
    *(
        pytest.param(
            lambda typ=typ: KEYS.eddsa_token({"typ": typ}),
            "WRONG_TYPE",
            id=f"typ-{typ!r}",
        )
        for typ in WRONG_TYPES
    ),
    pytest.param(
        lambda: _with_signature(KEYS.es256_token(), bytes(64)),
        "BAD_SIGNATURE",
        id="es256-zeros",
    ),
    pytest.param(
        lambda: _with_signature(KEYS.eddsa_token(), bytes(64)),
        "BAD_SIGNATURE",
        id="eddsa-zeros",
    ),
    pytest.param(
        lambda: KEYS.eddsa_token()[:-10], "BAD_SIGNATURE", id="truncated-signature"
    ),
    pytest.param(
        lambda: KEYS.eddsa_token()[:-1],
        "MALFORMED_TOKEN",
        id="truncated-to-bad-base64",
    ),
    pytest.param(
        lambda: KEYS.eddsa_token().rpartition(".")[0],
        "MALFORMED_TOKEN",
        id="truncated-to-two-parts",
    ),
    pytest.param(lambda: KEYS.eddsa_token() + "==", "MALFORMED_TOKEN", id="padded"),
    pytest.param(
        lambda: KEYS.eddsa_token() + "=", "MALFORMED_TOKEN", id="padded-partly"
    ),
    pytest.param(
        lambda: "{}==.{}.{}".format(*_parts(KEYS.eddsa_token())),
        "MALFORMED_TOKEN",
        id="padded-header",
    ),
    pytest.param(
        lambda: "{}.{}!.{}".format(*_parts(KEYS.eddsa_token())),
        "MALFORMED_TOKEN",
        id="not-base64-body",
    ),
    pytest.param(
        lambda: "{}.{}.{}+/".format(*_parts(KEYS.eddsa_token())),
        "MALFORMED_TOKEN",
        id="not-base64url-signature",
    ),
    pytest.param(
        lambda: KEYS.eddsa_token() + ".extra", "MALFORMED_TOKEN", id="four-parts"
    ),
    pytest.param(lambda: "not a token at all", "MALFORMED_TOKEN", id="prose"),
    pytest.param(
        lambda: _with_body(KEYS.eddsa_token(), {"sub": "admin", "scope": "*"}),
        "BAD_SIGNATURE",
        id="tampered-body",
    ),
    *(
        pytest.param(
            lambda name=name: with_raw_header(
                hostile_header(name, KEYS.eddsa_kid), KEYS.eddsa_token()
            ),
            "MALFORMED_TOKEN",
            id=f"header-{name}",
        )
        for name in HOSTILE_HEADER_NAMES
    ),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def echo() -> AsyncIterator[echo_grpc.EchoServiceStub]:
    settings = test_server_settings("auth")
    async with serve(echo_service(), settings, KEYS.verifier()) as running:
        async with running.channel() as channel:
            yield echo_grpc.EchoServiceStub(channel)


async def _echo_as(echo: echo_grpc.EchoServiceStub, token: str) -> str:
    reply = await echo.Echo(
        echo_pb2.EchoRequest(message="hi"), metadata=(bearer(token),)
    )
    return reply.caller


async def _refusal(echo: echo_grpc.EchoServiceStub, token: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _echo_as(echo, token)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_info(raised.value)
    assert info.domain == "echo.empire-security"
    return info.reason


async def test_honest_tokens_of_both_keys_pass_so_the_forgers_are_sound(
    echo: echo_grpc.EchoServiceStub,
) -> None:
    assert await _echo_as(echo, KEYS.eddsa_token()) == "mallory"
    assert await _echo_as(echo, KEYS.es256_token(sub="p256")) == "p256"
    assert await _echo_as(echo, KEYS.eddsa_token(nbf=None)) == "mallory"


@pytest.mark.parametrize(
    "typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"]
)
async def test_access_token_type_passes_in_either_form_and_any_case(
    echo: echo_grpc.EchoServiceStub, typ: str
) -> None:
    assert await _echo_as(echo, KEYS.eddsa_token({"typ": typ})) == "mallory"
    assert await _echo_as(echo, KEYS.es256_token(typ=typ, sub="p256")) == "p256"


@pytest.mark.parametrize(("forge", "reason"), ATTACKS)
async def test_attack_is_unauthenticated_with_its_reason(
    echo: echo_grpc.EchoServiceStub, forge: Callable[[], str], reason: str
) -> None:
    assert await _refusal(echo, forge()) == reason
    # Whatever the attack, the verifier fetched the key set once, when cold.
    assert KEYS.fetches <= 1


async def test_huge_token_is_refused_before_parsing(
    echo: echo_grpc.EchoServiceStub,
) -> None:
    verifier = KEYS.verifier()
    huge = KEYS.eddsa_token() + "A" * MAX_TOKEN_BYTES
    with pytest.raises(Unauthenticated) as raised:
        await verifier.verify(huge)
    assert raised.value.reason == "MALFORMED_TOKEN"
    # Through a server too: its metadata limit is above the verifier's, so
    # the caller hears the verifier's reason rather than gRPC's own refusal.
    assert await _refusal(echo, huge) == "MALFORMED_TOKEN"


async def test_jku_x5u_and_jwk_headers_are_never_followed(
    echo: echo_grpc.EchoServiceStub,
) -> None:
    async with attacker_server() as (url, hits):
        for extra in ({"jku": url}, {"x5u": url}, {"jwk": _ATTACKER_JWK}):
            elsewhere = _attacker_token({"alg": "EdDSA", "kid": "evil", **extra})
            assert await _refusal(echo, elsewhere) == "UNKNOWN_KEY"

            # Naming our kid while carrying the attacker's key: the signature
            # is checked against our key only.
            ours = _attacker_token({"alg": "EdDSA", "kid": KEYS.eddsa_kid, **extra})
            assert await _refusal(echo, ours) == "BAD_SIGNATURE"
    assert hits == []


async def test_random_kids_fetch_the_jwks_at_most_once_per_refetch_interval() -> None:
    keys, now = PublishedKeys(), [time.time()]
    verifier = keys.verifier(refetch_interval_seconds=10, clock=lambda: now[0])
    async with serve(echo_service(), test_server_settings("auth"), verifier) as server:
        async with server.channel() as channel:
            echo = echo_grpc.EchoServiceStub(channel)

            async def refuse_random_kids() -> None:
                for _ in range(25):
                    kid = secrets.token_hex(8)
                    token = _attacker_token({"alg": "EdDSA", "kid": kid})
                    assert await _refusal(echo, token) == "UNKNOWN_KEY"

            await refuse_random_kids()
            assert keys.fetches == 1  # the cold start's fetch, and no other

            now[0] += 10
            await refuse_random_kids()
            assert keys.fetches == 2

            assert await _echo_as(echo, keys.eddsa_token()) == "mallory"
            assert keys.fetches == 2


@pytest.mark.parametrize("refetch", ["refresh", "unknown-kid"])
async def test_remembered_token_is_refused_once_a_refetch_withdraws_its_key(
    refetch: str,
) -> None:
    keys, now = PublishedKeys(), [time.time()]
    verifier = keys.verifier(refetch_interval_seconds=10, clock=lambda: now[0])
    old = keys.eddsa_token(sub="old")
    assert (await verifier.verify(old)).subject == "old"  # and remembered

    keys.rotate_eddsa()
    if refetch == "refresh":
        await verifier.refresh()
    else:
        # The first token of the new key makes the verifier fetch the set.
        now[0] += 10
        assert (await verifier.verify(keys.eddsa_token(sub="new"))).subject == "new"
    assert keys.fetches == 2

    with pytest.raises(Unauthenticated) as raised:
        await verifier.verify(old)
    assert raised.value.reason == "UNKNOWN_KEY"
