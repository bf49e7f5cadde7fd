"""Signing keys: generation, their public JWK, and their lifecycle states.

A key is *next* (published, not signing), then *current* (signing), then
*retiring* (published until every token it signed has expired), then *retired*
(unpublished, its private half erased).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_JWT_ALGORITHMS: dict[str, Algorithm] = get_default_algorithms()
# The members RFC 7638 hashes for a key's thumbprint, per key type.
_THUMBPRINT_MEMBERS = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
}


class KeyState(StrEnum):
    NEXT = "next"
    CURRENT = "current"
    RETIRING = "retiring"
    RETIRED = "retired"


PUBLISHED_STATES = frozenset({KeyState.NEXT, KeyState.CURRENT, KeyState.RETIRING})


@dataclass(frozen=True)
class SigningKey:
    """One key pair and where it is in its lifecycle. Times are epoch ms."""

    key_id: str
    algorithm: str
    state: KeyState
    public_jwk: dict[str, Any]
    private_key: PrivateKey | None
    created_ms: int
    activated_ms: int | None = None
    deactivated_ms: int | None = None
    retire_ms: int | None = None

    @property
    def public_key(self) -> PublicKey:
        return jwt.PyJWK(self.public_jwk, algorithm=self.algorithm).key  # type: ignore[no-any-return]

    def moved_to(
        self,
        state: KeyState,
        *,
        activated_ms: int | None = None,
        deactivated_ms: int | None = None,
        retire_ms: int | None = None,
    ) -> SigningKey:
        """This key in `state`; times not given keep their value."""
        return replace(
            self,
            state=state,
            activated_ms=activated_ms or self.activated_ms,
            deactivated_ms=deactivated_ms or self.deactivated_ms,
            retire_ms=retire_ms or self.retire_ms,
        )


def generate_signing_key(algorithm: str, now_ms: int) -> SigningKey:
    """A fresh NEXT key; its id is its RFC 7638 thumbprint."""
    private_key = _generate_private_key(algorithm)
    public = _JWT_ALGORITHMS[algorithm].to_jwk(private_key.public_key(), as_dict=True)
    key_id = jwk_thumbprint(public)
    jwk = {**public, "kid": key_id, "alg": algorithm, "use": "sig"}
    return SigningKey(
        key_id=key_id,
        algorithm=algorithm,
        state=KeyState.NEXT,
        public_jwk=jwk,
        private_key=private_key,
        created_ms=now_ms,
    )


def _generate_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unsupported signing algorithm {algorithm!r}")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps(
        {name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def private_key_bytes(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(der: bytes, algorithm: str) -> PrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    if algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if algorithm == "ES256" and isinstance(key, ec.EllipticCurvePrivateKey):
        return key
    if algorithm == "RS256" and isinstance(key, rsa.RSAPrivateKey):
        return key
    raise ValueError("the stored private key does not match its algorithm")


def seal_context(key_id: str, algorithm: str) -> bytes:
    """What a sealed private key is bound to, so rows cannot be swapped."""
    return f"signing-key:{key_id}:{algorithm}".encode()
