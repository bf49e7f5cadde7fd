"""Who is calling: bearer JWTs verified locally against auth's published keys.

Every service verifies tokens itself, against the JWKS it fetched from auth and
cached, so auth is not on any other service's hot path. The set is fetched
again when a token names an unknown `kid`, at most once per refetch interval,
so a stream of made-up `kid`s cannot turn verifiers into a flood against auth.
Tokens that auth has revoked are refused too, from a list of their ids that
auth publishes and the verifier polls (`shared.revocations`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import enum
import json
import logging
import re
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

from shared.errors import PermissionDenied, Unauthenticated
from shared.revocations import RevocationList

logger = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = frozenset({"EdDSA", "ES256", "RS256"})
MAX_TOKEN_BYTES = 8192
MAX_KEY_ID_CHARS = 128
ALL_SCOPES = "*"
_VERIFIED_CACHE_SIZE = 4096
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
# RFC 9068 explicit typing: the `typ` auth mints, and the forms a verifier
# accepts (media types compare case-insensitively, section 4).
ACCESS_TOKEN_TYPE = "at+jwt"
_ACCESS_TOKEN_TYPES = frozenset({ACCESS_TOKEN_TYPE, "application/at+jwt"})


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of the current RPC."""

    subject: str
    scopes: frozenset[str] = frozenset()
    roles: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)
    token_id: str = ""

    @property
    def is_anonymous(self) -> bool:
        return self.subject == ""

    def has_scope(self, required: str) -> bool:
        """True if any resource under `required` may be touched by this caller."""
        if ALL_SCOPES in self.scopes or required in self.scopes:
            return True
        qualified = required + ":"
        return any(scope.startswith(qualified) for scope in self.scopes)

    def allows(self, required: str, resource: str) -> bool:
        """True if this caller holds `required` for `resource`.

        An unqualified scope covers every resource; `secrets:read:llm/` covers
        only resources starting with `llm/`.
        """
        if ALL_SCOPES in self.scopes or required in self.scopes:
            return True
        qualified = required + ":"
        return any(
            scope.startswith(qualified) and resource.startswith(scope[len(qualified) :])
            for scope in self.scopes
        )

    def require_whole_scope(self, required: str) -> None:
        """Refuses unless the caller holds `required` unqualified (or "*").

        For calls that name no resource a qualifier could be checked against:
        there `cache:admin:x` must not pass for `cache:admin`.
        """
        if ALL_SCOPES not in self.scopes and required not in self.scopes:
            raise _missing_scope(required)

    def require_scope(self, required: str, resource: str | None = None) -> None:
        allowed = (
            self.has_scope(required)
            if resource is None
            else self.allows(required, resource)
        )
        if not allowed:
            raise _missing_scope(required)


def _missing_scope(required: str) -> PermissionDenied:
    return PermissionDenied(
        f"the caller lacks the scope {required!r} for this request",
        reason="MISSING_SCOPE",
        metadata={"scope": required},
    )


ANONYMOUS = Principal(subject="")
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "empire_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    """The caller of the RPC being served (anonymous on public methods)."""
    return _current.get()


def set_current_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    scope = claims.get("scope", "")
    roles = claims.get("roles", [])
    return Principal(
        subject=str(claims.get("sub", "")),
        scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
        roles=tuple(str(role) for role in roles) if isinstance(roles, list) else (),
        claims=claims,
        token_id=str(claims.get("jti", "")),
    )


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal: ...


JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]


class HttpJwksSource:
    """Fetches a JWKS document over plain HTTP (auth's `/.well-known/jwks.json`)."""

    def __init__(self, url: str, timeout_seconds: float = 3.0) -> None:
        self._url = url
        self._timeout = timeout_seconds

    async def __call__(self) -> Mapping[str, Any]:
        return await asyncio.to_thread(self._fetch)

    def _fetch(self) -> Mapping[str, Any]:
        with urllib.request.urlopen(self._url, timeout=self._timeout) as response:
            document: Mapping[str, Any] = json.loads(response.read(1 << 20))
        return document


class JwksTokenVerifier:
    """Verifies access tokens against a JWKS, following RFC 8725.

    One algorithm per key (the key's own `alg`), `typ` an access token's
    (RFC 9068), `exp`, `iat`, `iss` and `aud` required, `jku`/`x5u`/`jwk`
    headers ignored, `kid` looked up only in the fetched set, and no `crit`
    extension accepted.
    """

    def __init__(
        self,
        fetch_jwks: JwksFetcher,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: float = 30.0,
        refetch_interval_seconds: float = 10.0,
        max_age_seconds: float = 300.0,
        revocations: RevocationList | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch_jwks = fetch_jwks
        self._revocations = revocations
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._refetch_interval = refetch_interval_seconds
        self._max_age = max_age_seconds
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_fetch = float("-inf")
        self._fetch_lock = asyncio.Lock()
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self.fetch_count = 0

    async def verify(self, token: str) -> Principal:
        now = self._clock()
        keys_are_fresh = now - self._last_fetch <= self._max_age
        cached = self._verified.get(token)
        if keys_are_fresh and cached is not None and cached[1] + self._leeway > now:
            return self._unless_revoked(cached[0])

        header = _read_header(token)
        if not keys_are_fresh:
            await self._refresh_stale_keys()
        key = await self._key_for(header.key_id)
        claims = self._decode(token, key)
        principal = principal_from_claims(claims)
        self._remember(token, principal, float(claims["exp"]))
        return self._unless_revoked(principal)

    async def start(self) -> None:
        """Begin polling auth's revocations (a no-op without a list)."""
        if self._revocations is not None:
            await self._revocations.start()

    async def close(self) -> None:
        if self._revocations is not None:
            await self._revocations.close()

    def _unless_revoked(self, principal: Principal) -> Principal:
        # Checked on every call, remembered verifications included, because a
        # revocation can arrive after the token was first verified.
        if self._revocations is not None and self._revocations.is_revoked(
            principal.token_id
        ):
            raise Unauthenticated("the token has been revoked", reason="REVOKED")
        return principal

    def forget_cached(self) -> None:
        """Drop remembered verifications (after a key is withdrawn)."""
        self._verified.clear()

    async def refresh(self) -> None:
        """Fetch the key set now, whatever the rate limit says."""
        async with self._fetch_lock:
            await self._fetch()

    async def _key_for(self, kid: str | None) -> jwt.PyJWK:
        if kid is None:
            raise Unauthenticated("the token names no usable key", reason="UNKNOWN_KEY")
        key = self._keys.get(kid)
        if key is None:
            await self._refetch_if_allowed()
            key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated(
                "the token's key is not published", reason="UNKNOWN_KEY"
            )
        return key

    async def _refresh_stale_keys(self) -> None:
        """Refetch a set older than its max-age, so withdrawn keys stop verifying.

        A failed fetch keeps the old set: auth being down must not stop
        verification with keys that were valid a moment ago.
        """
        async with self._fetch_lock:
            if self._clock() - self._last_fetch <= self._max_age:
                return
            try:
                await self._fetch()
            except Exception as error:  # noqa: BLE001 - any fetch failure degrades alike
                logger.warning(
                    "cannot refresh the JWKS, keeping the cached keys: %s",
                    type(error).__name__,
                )

    async def _refetch_if_allowed(self) -> None:
        async with self._fetch_lock:
            if self._clock() - self._last_fetch < self._refetch_interval:
                return
            try:
                await self._fetch()
            except Exception as error:  # noqa: BLE001 - any fetch failure degrades alike
                logger.warning("cannot fetch the JWKS: %s", type(error).__name__)
                raise Unauthenticated(
                    "the token cannot be verified now", reason="JWKS_UNAVAILABLE"
                ) from None

    async def _fetch(self) -> None:
        self._last_fetch = self._clock()
        self.fetch_count += 1
        document = await self._fetch_jwks()
        self._keys = parse_jwks(document)
        self._verified.clear()

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                # `jti` too: a token without one could not be revoked here.
                options={"require": ["exp", "iat", "iss", "aud", "jti"]},
            )
        except jwt.PyJWTError as error:
            reason, message = classify_jwt_error(error)
            raise Unauthenticated(message, reason=reason) from None
        return claims

    def _remember(self, token: str, principal: Principal, expires_at: float) -> None:
        self._verified[token] = (principal, expires_at)
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)


def parse_jwks(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """The usable keys of a JWKS document by `kid`; keys without one alg are skipped."""
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document.get("keys", []):
        kid, algorithm = entry.get("kid"), entry.get("alg")
        if not isinstance(kid, str) or algorithm not in ALLOWED_ALGORITHMS:
            continue
        try:
            keys[kid] = jwt.PyJWK(entry, algorithm=algorithm)
        except jwt.PyJWTError:
            logger.warning("skipping an unusable JWKS entry (kid %s)", kid[:64])
    return keys


class HeaderProblem(enum.Enum):
    """Why a token was refused on its header alone, before any key lookup."""

    TOO_LARGE = "too large"
    MALFORMED = "malformed"
    ALGORITHM = "algorithm not accepted"
    CRITICAL = "critical extension"
    TYPE = "not an access token"


class TokenHeaderError(Exception):
    """A token refused on its header; `problem` says why."""

    def __init__(self, problem: HeaderProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


@dataclass(frozen=True)
class TokenHeader:
    """What verification reads of a JWS header, each part of the type it must be."""

    algorithm: str  # one of ALLOWED_ALGORITHMS
    key_id: str | None  # None when absent, not a string, empty or too long


def read_token_header(token: str) -> TokenHeader:
    """The header of a compact JWS, checked before any key is looked up.

    Raises `TokenHeaderError`. Every header value read here is type-checked
    first, so no value an attacker chose reaches a lookup it could break
    (a list as `alg` in a set membership test, say). Only the header is
    decoded: PyJWT decodes the rest once the key is known.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenHeaderError(HeaderProblem.TOO_LARGE)
    header = _decode_header(token)
    if not _optional(header, "alg", str) or not _optional(header, "typ", str):
        raise TokenHeaderError(HeaderProblem.MALFORMED)
    if "crit" in header and not _is_list_of_names(header["crit"]):
        raise TokenHeaderError(HeaderProblem.MALFORMED)

    algorithm, key_id = header.get("alg"), header.get("kid")
    if algorithm not in ALLOWED_ALGORITHMS:
        raise TokenHeaderError(HeaderProblem.ALGORITHM)
    if "crit" in header:
        raise TokenHeaderError(HeaderProblem.CRITICAL)
    if header.get("typ", "").lower() not in _ACCESS_TOKEN_TYPES:
        # An ID token or any other JWT signed by the same key must not pass
        # for an access token (RFC 8725 section 3.11).
        raise TokenHeaderError(HeaderProblem.TYPE)

    usable = isinstance(key_id, str) and 0 < len(key_id) <= MAX_KEY_ID_CHARS
    return TokenHeader(algorithm=algorithm, key_id=key_id if usable else None)


def _decode_header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3 or not all(_BASE64URL.fullmatch(part) for part in parts[:2]):
        raise TokenHeaderError(HeaderProblem.MALFORMED)
    if parts[2] and not _BASE64URL.fullmatch(parts[2]):
        # An empty signature is left for the algorithm check to refuse.
        raise TokenHeaderError(HeaderProblem.MALFORMED)
    encoded = parts[0]
    try:
        header = json.loads(
            base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        )
    except (ValueError, binascii.Error, RecursionError):
        # RecursionError: a header of a few thousand nested `[` fits the size
        # limit and exhausts the JSON decoder's recursion depth.
        raise TokenHeaderError(HeaderProblem.MALFORMED) from None
    if not isinstance(header, dict):
        raise TokenHeaderError(HeaderProblem.MALFORMED)
    return header


def _optional(header: dict[str, Any], name: str, kind: type) -> bool:
    return name not in header or isinstance(header[name], kind)


def _is_list_of_names(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(name, str) for name in value)
    )


_HEADER_REFUSALS = {
    HeaderProblem.TOO_LARGE: ("MALFORMED_TOKEN", "the token is too large"),
    HeaderProblem.MALFORMED: ("MALFORMED_TOKEN", "the token is malformed"),
    HeaderProblem.ALGORITHM: ("BAD_ALGORITHM", "the token's algorithm is not accepted"),
    HeaderProblem.CRITICAL: (
        "UNSUPPORTED_CRIT",
        "the token requires an unsupported extension",
    ),
    HeaderProblem.TYPE: ("WRONG_TYPE", "the token is not an access token"),
}


def _read_header(token: str) -> TokenHeader:
    try:
        return read_token_header(token)
    except TokenHeaderError as error:
        reason, message = _HEADER_REFUSALS[error.problem]
        raise Unauthenticated(message, reason=reason) from None


def classify_jwt_error(error: jwt.PyJWTError) -> tuple[str, str]:
    """A machine-readable reason and a safe message for a failed decode."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return "EXPIRED", "the token has expired"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "NOT_YET_VALID", "the token is not valid yet"
    if isinstance(error, jwt.InvalidAudienceError):
        return "WRONG_AUDIENCE", "the token is for another audience"
    if isinstance(error, jwt.InvalidIssuerError):
        return "WRONG_ISSUER", "the token is from another issuer"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return "MISSING_CLAIM", f"the token lacks the {error.claim!r} claim"
    if isinstance(error, jwt.InvalidSignatureError):
        return "BAD_SIGNATURE", "the token's signature does not verify"
    if isinstance(error, jwt.InvalidAlgorithmError):
        return "BAD_ALGORITHM", "the token's algorithm does not match its key"
    return "MALFORMED_TOKEN", "the token is malformed"


def bearer_token(metadata: object) -> str | None:
    """The token of an `authorization: Bearer ...` metadata entry, if any."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None
