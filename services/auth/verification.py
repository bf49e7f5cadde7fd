"""Verifying access tokens against the keyring in memory, following RFC 8725.

Exactly one algorithm per key (the key's own); `typ` an access token's
(RFC 9068); `exp`, `iat`, `iss`, `aud`, `sub` and `jti` required; `jku`,
`x5u` and `jwk` headers never read; `kid` looked up only among this service's
keys; no `crit` extension accepted; a bounded token size, checked before any
parsing. Every failure has a reason.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from services.auth.denylist import Denylist
from services.auth.keyring import SigningKeyRing
from shared.authn import (
    HeaderProblem,
    Principal,
    TokenHeaderError,
    principal_from_claims,
    read_token_header,
)
from shared.errors import Unauthenticated

REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]
_CACHE_SIZE = 8192
# The header is read by the same function the other services' verifier uses;
# VerifyToken answers in its own vocabulary (`VerifyTokenResponse.Reason`).
_HEADER_REASONS = {
    HeaderProblem.TOO_LARGE: "TOO_LARGE",
    HeaderProblem.MALFORMED: "MALFORMED",
    HeaderProblem.ALGORITHM: "DISALLOWED_ALGORITHM",
    HeaderProblem.CRITICAL: "UNSUPPORTED_CRITICAL_HEADER",
    HeaderProblem.TYPE: "WRONG_TYPE",
}


@dataclass(frozen=True)
class Verdict:
    """The answer about one token: valid with claims, or a reason it is not."""

    valid: bool
    reason: str = ""
    claims: dict[str, Any] = field(default_factory=dict)
    key_id: str = ""

    @property
    def token_id(self) -> str:
        return str(self.claims.get("jti", ""))


def _invalid(reason: str, key_id: str = "") -> Verdict:
    return Verdict(valid=False, reason=reason, key_id=key_id)


class TokenChecker:
    """Checks tokens; remembers recent valid ones so a repeated token is cheap."""

    def __init__(
        self,
        keyring: SigningKeyRing,
        denylist: Denylist,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyring = keyring
        self._denylist = denylist
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._clock = clock
        self._recent: OrderedDict[tuple[str, str], Verdict] = OrderedDict()

    async def check(self, token: str, audience: str = "") -> Verdict:
        audience = audience or self._audience
        remembered = self._recent.get((token, audience))
        if remembered is not None:
            return self._recheck(remembered)

        verdict = await self._verify(token, audience, verify_expiry=True)
        if verdict.valid:
            self._remember((token, audience), verdict)
            if self._denylist.is_revoked(verdict.token_id):
                return _invalid("REVOKED", verdict.key_id)
        return verdict

    async def inspect(self, token: str) -> Verdict:
        """Signature and issuer checked, expiry and audience not: for revocation."""
        return await self._verify(token, "", verify_expiry=False)

    def _recheck(self, verdict: Verdict) -> Verdict:
        # What may have changed since the token was first verified: the clock,
        # the denylist, and whether its key is still published.
        if self._clock() > verdict.claims["exp"] + self._leeway:
            return _invalid("EXPIRED", verdict.key_id)
        if self._denylist.is_revoked(verdict.token_id):
            return _invalid("REVOKED", verdict.key_id)
        if self._keyring.verification_key(verdict.key_id) is None:
            return _invalid("KEY_RETIRED", verdict.key_id)
        return verdict

    async def _verify(self, token: str, audience: str, verify_expiry: bool) -> Verdict:
        try:
            header = read_token_header(token)
        except TokenHeaderError as error:
            return _invalid(_HEADER_REASONS[error.problem])
        algorithm, key_id = header.algorithm, header.key_id
        if key_id is None:
            return _invalid("UNKNOWN_KEY")

        key = self._keyring.verification_key(key_id)
        if key is None and not self._keyring.is_retired(key_id):
            # Another replica may have published a key we have not synced yet.
            if await self._keyring.reload_for_unknown_key():
                key = self._keyring.verification_key(key_id)
        if key is None:
            reason = (
                "KEY_RETIRED" if self._keyring.is_retired(key_id) else "UNKNOWN_KEY"
            )
            return _invalid(reason)
        if algorithm != key.algorithm:
            return _invalid("DISALLOWED_ALGORITHM", key_id)

        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.public_key,
                algorithms=[key.algorithm],
                audience=audience or None,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": REQUIRED_CLAIMS,
                    "verify_exp": verify_expiry,
                    "verify_aud": bool(audience),
                },
            )
        except jwt.PyJWTError as error:
            return _invalid(_reason_of(error), key_id)
        return Verdict(valid=True, claims=claims, key_id=key_id)

    def _remember(self, cache_key: tuple[str, str], verdict: Verdict) -> None:
        self._recent[cache_key] = verdict
        if len(self._recent) > _CACHE_SIZE:
            self._recent.popitem(last=False)


class KeyringTokenVerifier:
    """The shared interceptor's verifier for auth itself: its own keyring, no JWKS."""

    def __init__(self, checker: TokenChecker) -> None:
        self._checker = checker

    async def verify(self, token: str) -> Principal:
        verdict = await self._checker.check(token)
        if not verdict.valid:
            raise Unauthenticated(
                "the bearer token is not valid", reason=verdict.reason
            )
        return principal_from_claims(verdict.claims)


def _reason_of(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.ExpiredSignatureError):
        return "EXPIRED"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "NOT_YET_VALID"
    if isinstance(error, jwt.InvalidAudienceError):
        return "WRONG_AUDIENCE"
    if isinstance(error, jwt.InvalidIssuerError):
        return "WRONG_ISSUER"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return "MISSING_CLAIM"
    if isinstance(error, jwt.InvalidSignatureError):
        return "BAD_SIGNATURE"
    if isinstance(error, jwt.InvalidAlgorithmError):
        return "DISALLOWED_ALGORITHM"
    return "MALFORMED"
