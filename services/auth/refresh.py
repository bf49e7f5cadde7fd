"""Refresh-token families: opaque, single-use, stored hashed, with reuse detection.

Each refresh hands back a new refresh token and uses up the old one. A used
token presented again within a short grace window (two tabs refreshing at
once) is honoured; after it, the reuse means the token leaked, so the whole
family is revoked, its access tokens included.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.auth.denylist import Denylist
from services.auth.secrets_box import MasterKey
from services.auth.store import AuthQueries, AuthStore, FamilyRow, RefreshTokenRow
from services.auth.tokens import Grant, MintedToken, TokenMinter
from shared.errors import InvalidArgument, Unauthenticated

logger = logging.getLogger(__name__)

REFRESH_TOKEN_PREFIX = "esr_"
_REFRESH_TOKEN = re.compile(r"^esr_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class RefreshPolicy:
    token_ttl_seconds: int
    family_max_age_seconds: int
    reuse_grace_seconds: float
    access_token_ttl_seconds: int


@dataclass(frozen=True)
class RefreshResult:
    access: MintedToken
    refresh_token: str
    refresh_expires_ms: int


@dataclass(frozen=True)
class _Outcome:
    result: RefreshResult | None = None
    error: Unauthenticated | None = None
    revoked: tuple[tuple[str, int], ...] = ()


class RefreshFamilies:
    def __init__(
        self,
        store: AuthStore,
        master_key: MasterKey,
        minter: TokenMinter,
        denylist: Denylist,
        policy: RefreshPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._master_key = master_key
        self._minter = minter
        self._denylist = denylist
        self._policy = policy
        self._clock = clock

    async def start(self, grant: Grant) -> RefreshResult:
        """Issue an access token and the first refresh token of a new family."""
        now = self._now_ms()
        family = FamilyRow(
            family_id=secrets.token_urlsafe(12),
            subject=grant.subject,
            scopes=tuple(sorted(grant.scopes)),
            roles=grant.roles,
            audience=grant.audience,
            claims=dict(grant.extra_claims),
            created_ms=now,
            expires_ms=now + self._policy.family_max_age_seconds * 1000,
        )
        async with self._store.transaction() as tx:
            await tx.create_family(family)
            return await self._issue_pair(tx, family, grant.ttl_seconds, now)

    async def rotate(self, refresh_token: str) -> RefreshResult:
        """Use up `refresh_token` and return its successor with a new access token."""
        candidates = self._hashes(refresh_token)
        async with self._store.transaction() as tx:
            outcome = await self._rotate_in(tx, candidates, self._now_ms())
        # Raised only now: a detected reuse must commit its revocation first.
        self._denylist.add(outcome.revoked)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.result is not None
        return outcome.result

    async def revoke(self, refresh_token: str) -> tuple[str, list[str]]:
        """Revoke the family of `refresh_token`; its family id and revoked token ids.

        Here the token is an argument, not the caller's credential: one this
        service never issued is a bad field (as for an access token), not a
        failed authentication.
        """
        found = None
        if _REFRESH_TOKEN.match(refresh_token):
            found = await _find(self._store, self._hashes(refresh_token))
        if found is None:
            raise InvalidArgument(
                "refresh_token",
                "not a refresh token this service issued",
                reason="REFRESH_TOKEN_INVALID",
            )
        row = found[1]
        async with self._store.transaction() as tx:
            revoked = await self._revoke_family(tx, row.family_id, self._now_ms())
        self._denylist.add(revoked)
        return row.family_id, [token_id for token_id, _ in revoked]

    async def _rotate_in(
        self, tx: AuthQueries, candidates: list[str], now: int
    ) -> _Outcome:
        found = await _find(tx, candidates)
        token_hash, row = found if found is not None else ("", None)
        if row is not None:
            # Read the family only once it is locked: a revocation committed
            # after our read would miss the access token we are about to issue.
            await tx.lock_family(row.family_id)
        family = None if row is None else await tx.get_family(row.family_id)
        if row is None or family is None:
            return _failure("the refresh token is not valid", "REFRESH_TOKEN_INVALID")
        if family.revoked_ms is not None:
            return _failure("the refresh token was revoked", "REFRESH_TOKEN_REVOKED")
        if row.expires_ms <= now or family.expires_ms <= now:
            return _failure("the refresh token has expired", "REFRESH_TOKEN_EXPIRED")

        first_use = row.used_ms is None and await tx.use_refresh_token(token_hash, now)
        if not first_use:
            used_ms = row.used_ms if row.used_ms is not None else now
            if now - used_ms > self._policy.reuse_grace_seconds * 1000:
                revoked = await self._revoke_family(tx, family.family_id, now)
                logger.warning(
                    "refresh token reused after the grace window; family %s revoked",
                    family.family_id,
                )
                return _Outcome(
                    error=Unauthenticated(
                        "the refresh token was already used; its family is revoked",
                        reason="REFRESH_TOKEN_REUSED",
                    ),
                    revoked=tuple(revoked),
                )
        ttl = self._policy.access_token_ttl_seconds
        return _Outcome(result=await self._issue_pair(tx, family, ttl, now))

    async def _issue_pair(
        self, tx: AuthQueries, family: FamilyRow, ttl_seconds: int, now: int
    ) -> RefreshResult:
        refresh_token = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires_ms = min(now + self._policy.token_ttl_seconds * 1000, family.expires_ms)
        await tx.add_refresh_token(
            RefreshTokenRow(
                token_hash=self._master_key.hash_refresh_token(refresh_token),
                family_id=family.family_id,
                created_ms=now,
                expires_ms=expires_ms,
            )
        )
        grant = Grant(
            subject=family.subject,
            scopes=frozenset(family.scopes),
            roles=family.roles,
            audience=family.audience,
            ttl_seconds=ttl_seconds,
            extra_claims=family.claims,
            family_id=family.family_id,
        )
        access = await self._minter.issue(grant, tx)
        return RefreshResult(access, refresh_token, expires_ms)

    async def _revoke_family(
        self, tx: AuthQueries, family_id: str, now: int
    ) -> list[tuple[str, int]]:
        await tx.revoke_family(family_id, now)
        live = await tx.live_tokens_of_family(
            family_id, self._denylist.still_accepted_after_ms(now)
        )
        await tx.revoke_tokens(live, now)
        return live

    def _hashes(self, refresh_token: str) -> list[str]:
        """Each hash the token may be stored under (see `MasterKey`)."""
        if not _REFRESH_TOKEN.match(refresh_token):
            raise Unauthenticated(
                "the refresh token is not valid", reason="REFRESH_TOKEN_INVALID"
            )
        return self._master_key.refresh_token_hashes(refresh_token)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


async def _find(
    queries: AuthQueries, candidates: list[str]
) -> tuple[str, RefreshTokenRow] | None:
    """The stored refresh token under the first candidate hash that has one.

    The current key's hash comes first, so only a token issued before a
    master-key rotation costs more than one lookup.
    """
    for token_hash in candidates:
        row = await queries.get_refresh_token(token_hash)
        if row is not None:
            return token_hash, row
    return None


def _failure(message: str, reason: str) -> _Outcome:
    return _Outcome(error=Unauthenticated(message, reason=reason))
