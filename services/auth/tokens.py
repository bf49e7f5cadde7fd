"""Minting access tokens: asymmetric JWTs signed by the keyring's current key."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from services.auth.keyring import SigningKeyRing
from services.auth.signing_keys import SigningKey
from services.auth.store import AuthQueries, IssuedTokenRow
from shared.authn import ACCESS_TOKEN_TYPE

TOKEN_TYPE = "Bearer"
# RFC 9068 explicit typing, so an access token cannot pass for another kind.
# Verifiers (`shared.authn.read_token_header`) refuse any other.
JWT_TYPE = ACCESS_TOKEN_TYPE
# Claims the service sets itself; a caller's extra claims can never set them.
RESERVED_CLAIMS = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "scope",
        "roles",
        "api_key_id",
        "cnf",
        "act",
        "azp",
        "client_id",
    }
)


@dataclass(frozen=True)
class Grant:
    """What a token will say: who, what it may do, for whom, for how long."""

    subject: str
    scopes: frozenset[str]
    roles: tuple[str, ...]
    audience: str
    ttl_seconds: int
    extra_claims: Mapping[str, Any] = field(default_factory=dict)
    family_id: str | None = None
    api_key_id: str | None = None


@dataclass(frozen=True)
class MintedToken:
    token: str
    token_id: str
    key_id: str
    issued_ms: int
    expires_ms: int
    scopes: tuple[str, ...]


class TokenMinter:
    """Signs grants into JWTs and records each issued token in the store."""

    def __init__(
        self,
        keyring: SigningKeyRing,
        issuer: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._clock = clock

    def mint(self, grant: Grant) -> MintedToken:
        key = self._signing_key()
        now = int(self._clock())
        token_id = secrets.token_urlsafe(16)
        scopes = tuple(sorted(grant.scopes))
        claims: dict[str, Any] = {
            **grant.extra_claims,
            "iss": self._issuer,
            "sub": grant.subject,
            "aud": grant.audience,
            "iat": now,
            "nbf": now,
            "exp": now + grant.ttl_seconds,
            "jti": token_id,
            "scope": " ".join(scopes),
            "roles": list(grant.roles),
        }
        if grant.api_key_id:
            claims["api_key_id"] = grant.api_key_id
        token = jwt.encode(
            claims,
            key.private_key,  # type: ignore[arg-type]
            algorithm=key.algorithm,
            headers={"kid": key.key_id, "typ": JWT_TYPE},
        )
        return MintedToken(
            token=token,
            token_id=token_id,
            key_id=key.key_id,
            issued_ms=now * 1000,
            expires_ms=(now + grant.ttl_seconds) * 1000,
            scopes=scopes,
        )

    async def issue(self, grant: Grant, queries: AuthQueries) -> MintedToken:
        """Mint a token and record it; fails (UNAVAILABLE) if the store is down."""
        await self._keyring.confirm_current(queries)
        minted = self.mint(grant)
        await queries.record_issued(
            IssuedTokenRow(
                token_id=minted.token_id,
                subject=grant.subject,
                key_id=minted.key_id,
                family_id=grant.family_id,
                api_key_id=grant.api_key_id,
                issued_ms=minted.issued_ms,
                expires_ms=minted.expires_ms,
            )
        )
        return minted

    def _signing_key(self) -> SigningKey:
        key = self._keyring.current
        if key.private_key is None:
            raise RuntimeError("the current signing key has no private half loaded")
        return key
