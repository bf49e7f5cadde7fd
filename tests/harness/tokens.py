"""A local token issuer for tests of services other than auth.

It signs with its own Ed25519 key and publishes a JWKS the shared verifier
fetches, exactly as it would fetch auth's.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.authn import ACCESS_TOKEN_TYPE, JwksTokenVerifier

ISSUER = "https://auth.empire-security.local"
AUDIENCE = "empire-security"


class LocalIssuer:
    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.kid = "test-" + uuid.uuid4().hex[:8]
        self._key = Ed25519PrivateKey.generate()
        self.jwks_fetches = 0

    def token(
        self,
        scopes: list[str] | tuple[str, ...] = (),
        *,
        subject: str = "tester",
        ttl: int = 300,
        roles: list[str] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "scope": " ".join(scopes),
            "roles": roles or [],
            **claims,
        }
        return jwt.encode(
            payload,
            self._key,
            algorithm="EdDSA",
            headers={"kid": self.kid, "typ": ACCESS_TOKEN_TYPE},
        )

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}

    def verifier(self, refetch_interval_seconds: float = 10.0) -> JwksTokenVerifier:
        async def fetch() -> dict[str, Any]:
            self.jwks_fetches += 1
            return self.jwks()

        return JwksTokenVerifier(
            fetch,
            issuer=self.issuer,
            audience=self.audience,
            leeway_seconds=5,
            refetch_interval_seconds=refetch_interval_seconds,
        )
