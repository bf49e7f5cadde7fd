"""API keys: created once, stored as keyed hashes, exchanged for access tokens."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.auth.api_key_format import ParsedApiKey, generate_api_key, parse_api_key
from services.auth.denylist import Denylist
from services.auth.scopes import covers
from services.auth.secrets_box import MasterKey
from services.auth.store import ApiKeyRow, AuthStore
from services.auth.tokens import Grant, MintedToken, TokenMinter
from shared.db import UniqueViolation
from shared.errors import NotFound, PermissionDenied, Unauthenticated

logger = logging.getLogger(__name__)

BOOTSTRAP_SUBJECT = "bootstrap-admin"


@dataclass(frozen=True)
class NewApiKey:
    display_name: str
    subject: str
    scopes: frozenset[str]
    roles: tuple[str, ...]
    creator: str
    ttl_seconds: int | None = None


class ApiKeyManager:
    def __init__(
        self,
        store: AuthStore,
        master_key: MasterKey,
        minter: TokenMinter,
        denylist: Denylist,
        *,
        exchange_ttl_seconds: int,
        role_scopes: Mapping[str, frozenset[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._role_scopes = role_scopes
        self._master_key = master_key
        self._minter = minter
        self._denylist = denylist
        self._exchange_ttl = exchange_ttl_seconds
        self._clock = clock

    async def create(self, spec: NewApiKey) -> tuple[ApiKeyRow, str]:
        """Store a new key; returns its row and its secret, shown this once."""
        for _ in range(3):
            key = generate_api_key()
            row = self._row(key, spec)
            try:
                await self._store.create_api_key(row)
            except UniqueViolation:
                continue  # an id clash in 62^12: draw again
            logger.info("created API key %s for %s", row.api_key_id, row.subject)
            return row, key.secret
        raise RuntimeError("could not draw an unused API key id")

    async def revoke(self, api_key_id: str) -> ApiKeyRow:
        """Revoke a key and deny every unexpired token exchanged for it."""
        now = self._now_ms()
        async with self._store.transaction() as tx:
            if await tx.get_api_key(api_key_id) is None:
                raise NotFound("no such API key", reason="API_KEY_NOT_FOUND")
            await tx.revoke_api_key(api_key_id, now)
            live = await tx.live_tokens_of_api_key(
                api_key_id, self._denylist.still_accepted_after_ms(now)
            )
            await tx.revoke_tokens(live, now)
            row = await tx.get_api_key(api_key_id)
        self._denylist.add(live)
        logger.info("revoked API key %s and %s tokens", api_key_id, len(live))
        assert row is not None
        return row

    async def exchange(
        self, secret: str, scopes: frozenset[str], audience: str
    ) -> MintedToken:
        """A short-lived access token for a valid key, with its scopes or fewer."""
        row = await self._authenticate(secret)
        for scope in sorted(scopes):
            if not any(covers(held, scope) for held in row.scopes):
                raise PermissionDenied(
                    "the API key does not hold a requested scope",
                    reason="SCOPE_EXCEEDS_API_KEY",
                    metadata={"scope": scope},
                )
        grant = Grant(
            subject=row.subject,
            scopes=scopes or frozenset(row.scopes),
            roles=self._roles_within(row.roles, scopes) if scopes else row.roles,
            audience=audience,
            ttl_seconds=self._exchange_ttl,
            api_key_id=row.api_key_id,
        )
        async with self._store.transaction() as tx:
            if not await tx.hold_unrevoked_api_key(row.api_key_id):
                raise Unauthenticated(
                    "the API key was revoked", reason="API_KEY_REVOKED"
                )
            return await self._minter.issue(grant, tx)

    def _roles_within(
        self, roles: tuple[str, ...], scopes: frozenset[str]
    ) -> tuple[str, ...]:
        """The key's roles that a narrowed token still wholly holds.

        A token narrowed to `secrets:read` must not claim `admin`: a consumer
        that grants by role would read it as holding everything.
        """
        return tuple(
            role
            for role in roles
            if all(
                any(covers(held, needed) for held in scopes)
                for needed in self._role_scopes.get(role, frozenset({"*"}))
            )
        )

    async def install_bootstrap(self, secret: str) -> bool:
        """Store the configured bootstrap admin key unless it was stored before."""
        parsed = parse_api_key(secret)
        if parsed is None:
            raise ValueError("the bootstrap API key is malformed")
        if await self._store.get_api_key(parsed.api_key_id) is not None:
            return False
        try:
            await self._store.create_api_key(self._row(parsed, _bootstrap_spec()))
        except UniqueViolation:
            return False  # another replica stored it first
        logger.info("stored the bootstrap admin API key %s", parsed.api_key_id)
        return True

    async def create_development_bootstrap(self) -> str | None:
        """On a development first start (no keys at all), make an admin key."""
        if await self._store.count_api_keys() > 0:
            return None
        row, secret = await self.create(_bootstrap_spec())
        # Printed, never logged: log lines are shipped and kept.
        print(
            "\nauth: development start; bootstrap admin API key (shown once):\n"
            f"  {secret}\n"
            "  set EMPIRE_AUTH_BOOTSTRAP_API_KEY in production instead.\n",
            file=sys.stderr,
            flush=True,
        )
        return row.api_key_id

    async def _authenticate(self, secret: str) -> ApiKeyRow:
        parsed = parse_api_key(secret)
        row = (
            None if parsed is None else await self._store.get_api_key(parsed.api_key_id)
        )
        match = (
            None
            if row is None
            else self._master_key.match_api_key(secret, row.secret_hash)
        )
        if row is None or match is None or not match.matches:
            raise Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
        if not match.up_to_date:
            # Made by an accepted (old) master key: move it to the current one
            # so the old key can be dropped once nothing needs it.
            current = self._master_key.hash_api_key(secret)
            await self._store.rehash_api_key(row.api_key_id, row.secret_hash, current)
        if row.revoked_ms is not None:
            raise Unauthenticated("the API key was revoked", reason="API_KEY_REVOKED")
        if row.expires_ms is not None and row.expires_ms <= self._now_ms():
            raise Unauthenticated("the API key has expired", reason="API_KEY_EXPIRED")
        return row

    def _row(self, key: ParsedApiKey, spec: NewApiKey) -> ApiKeyRow:
        now = self._now_ms()
        return ApiKeyRow(
            api_key_id=key.api_key_id,
            secret_hash=self._master_key.hash_api_key(key.secret),
            display_name=spec.display_name,
            subject=spec.subject,
            scopes=tuple(sorted(spec.scopes)),
            roles=spec.roles,
            creator=spec.creator,
            created_ms=now,
            expires_ms=None
            if spec.ttl_seconds is None
            else now + spec.ttl_seconds * 1000,
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _bootstrap_spec() -> NewApiKey:
    return NewApiKey(
        display_name="bootstrap admin",
        subject=BOOTSTRAP_SUBJECT,
        scopes=frozenset({"*"}),
        roles=("admin",),
        creator="bootstrap",
    )
