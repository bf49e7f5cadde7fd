"""The signing keyring: which key signs, which keys verify, and safe rotation.

The keyring lives in memory (so verification never touches the database) and
in the store (so replicas agree). Every lifecycle change is a compare-and-set
on the store's keyring version: two replicas rotating at once cannot both
promote a key. A key is published at least the JWKS cache lifetime before it
signs, and stays published until every token it signed has expired.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from services.auth.secrets_box import MasterKey
from services.auth.signing_keys import (
    PUBLISHED_STATES,
    KeyState,
    PublicKey,
    SigningKey,
    generate_signing_key,
    load_private_key,
    private_key_bytes,
    seal_context,
)
from services.auth.store import AuthQueries, AuthStore, KeyRow
from shared.errors import Aborted, EmpireError, FailedPrecondition

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class KeyringPolicy:
    algorithm: str
    jwks_max_age_seconds: int
    # A retiring key stays published this long after it stops signing: the
    # longest token lifetime, plus how late another replica may still sign
    # with it (one sync interval), plus the verifiers' clock leeway.
    retire_after_seconds: float
    rotation_interval_seconds: int
    unknown_kid_reload_seconds: float = 1.0
    # How late another replica may publish a key this one created (one sync
    # interval): a JWKS it served without the key is cached from then on.
    sync_interval_seconds: float = 0.0


@dataclass(frozen=True)
class VerificationKey:
    algorithm: str
    public_key: PublicKey


@dataclass(frozen=True)
class Rotation:
    current: SigningKey
    next: SigningKey
    previous: SigningKey


class SigningKeyRing:
    """Signing and verification keys, kept in step with the store."""

    def __init__(
        self,
        store: AuthStore,
        master_key: MasterKey,
        policy: KeyringPolicy,
        clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._master_key = master_key
        self._policy = policy
        self._clock = clock
        self._version = -1
        self._keys: dict[str, SigningKey] = {}
        self._verification: dict[str, VerificationKey] = {}
        self._current: SigningKey | None = None
        self._jwks: dict[str, Any] = {"keys": []}
        self._jwks_json = b'{"keys":[]}'
        self._last_unknown_reload = float("-inf")
        # When (by `clock`) the keys in memory were last read from, or
        # written to, the store: their states are known as of then.
        self._confirmed_at = float("-inf")
        self.reload_count = 0

    async def start(self) -> None:
        """Load the keyring; on a first start create the current and next keys."""
        for _ in range(5):
            await self.reload()
            try:
                await self._ensure_signing_keys()
                return
            except Aborted:
                continue  # another replica initialised it first; reload
        raise Aborted("the keyring keeps changing under us", reason="KEYRING_CHANGED")

    @property
    def current(self) -> SigningKey:
        if self._current is None:
            raise RuntimeError("the keyring has not started")
        return self._current

    @property
    def next(self) -> SigningKey | None:
        return next(
            (key for key in self._keys.values() if key.state is KeyState.NEXT), None
        )

    def verification_key(self, key_id: str) -> VerificationKey | None:
        return self._verification.get(key_id)

    def is_retired(self, key_id: str) -> bool:
        key = self._keys.get(key_id)
        return key is not None and key.state is KeyState.RETIRED

    def jwks(self) -> dict[str, Any]:
        return self._jwks

    def jwks_json(self) -> bytes:
        return self._jwks_json

    def keys(self) -> list[SigningKey]:
        """Every key, newest first."""
        return sorted(
            self._keys.values(), key=lambda k: (k.created_ms, k.key_id), reverse=True
        )

    async def reload(self, queries: AuthQueries | None = None) -> None:
        """Catch up with the store (another replica may have rotated).

        `queries` reads inside a caller's transaction, where the store itself
        may not be used (SQLite serialises its transactions).
        """
        self.reload_count += 1
        read_at = self._clock()
        version, rows = await (queries or self._store).fetch_keyring()
        if version == self._version:
            self._confirmed_at = max(self._confirmed_at, read_at)
            return
        keys = {row.key_id: self._from_row(row) for row in rows}
        self._install(version, keys)
        self._confirmed_at = read_at

    async def confirm_current(self, queries: AuthQueries) -> None:
        """Make sure the current key's state was read from the store at most
        one sync interval ago, reading it again if need be.

        A retiring key stays published for one sync interval past the longest
        token lifetime, so a replica may sign with a key another one demoted
        only that much later. One that missed its syncs (a database outage)
        would otherwise sign with it, once the database is back, until its
        next sync: tokens that outlive their key's publication.
        """
        age = self._clock() - self._confirmed_at
        if age > self._policy.sync_interval_seconds:
            await self.reload(queries)

    async def reload_for_unknown_key(self) -> bool:
        """Reload at most once per interval; True if it did."""
        now = time.monotonic()
        if now - self._last_unknown_reload < self._policy.unknown_kid_reload_seconds:
            return False
        self._last_unknown_reload = now
        try:
            await self.reload()
        except EmpireError as error:
            logger.warning("cannot reload the keyring: %s", error.reason)
            return False
        return True

    async def rotate(
        self, algorithm: str | None = None, force: bool = False
    ) -> Rotation:
        """Promote the next key, start retiring the current one, publish a new next."""
        now = self._now_ms()
        upcoming, current = self.next, self.current
        if upcoming is None:
            raise FailedPrecondition("no next key is published", reason="NO_NEXT_KEY")
        promotable_at = self._promotable_at(upcoming)
        if now < promotable_at and not force:
            raise FailedPrecondition(
                "the next key has not been published for the JWKS cache lifetime yet",
                reason="NEXT_KEY_TOO_NEW",
                metadata={"promotable_after_ms": str(promotable_at)},
            )

        promoted = upcoming.moved_to(KeyState.CURRENT, activated_ms=now)
        if force:
            # A compromised key must stop verifying at once.
            previous = self._retired(current, now, retire_ms=now)
        else:
            retire_ms = now + int(self._policy.retire_after_seconds * 1000)
            previous = current.moved_to(
                KeyState.RETIRING, deactivated_ms=now, retire_ms=retire_ms
            )
            previous = _without_private_key(previous)
        fresh = generate_signing_key(algorithm or self._policy.algorithm, now)
        await self._commit([promoted, previous, fresh])
        logger.info(
            "rotated signing keys: %s now signs, %s stopped, %s published next",
            promoted.key_id,
            previous.key_id,
            fresh.key_id,
        )
        return Rotation(current=promoted, next=fresh, previous=previous)

    async def maintain(self) -> None:
        """Retire keys whose tokens have all expired; rotate when the schedule says."""
        now = self._now_ms()
        due = [
            self._retired(key, now, retire_ms=key.retire_ms or now)
            for key in self._keys.values()
            if key.state is KeyState.RETIRING and (key.retire_ms or 0) <= now
        ]
        if due:
            await self._commit(due)
            logger.info("retired signing keys %s", ", ".join(k.key_id for k in due))
        if self._rotation_due(now):
            await self.rotate()

    def _rotation_due(self, now: int) -> bool:
        interval = self._policy.rotation_interval_seconds
        current, upcoming = self._current, self.next
        if not interval or current is None or upcoming is None:
            return False
        activated = current.activated_ms or current.created_ms
        promotable = self._promotable_at(upcoming)
        return activated + interval * 1000 <= now and promotable <= now

    def _promotable_at(self, upcoming: SigningKey) -> int:
        """When every JWKS cached anywhere holds `upcoming`: every replica has
        published it, and a set any of them served without it has expired."""
        lead = self._policy.jwks_max_age_seconds + self._policy.sync_interval_seconds
        return upcoming.created_ms + int(lead * 1000)

    async def _ensure_signing_keys(self) -> None:
        now = self._now_ms()
        changes: list[SigningKey] = []
        if self._current is None:
            # A first start: nothing has ever verified against this keyring, so
            # the first key may sign at once.
            first = generate_signing_key(self._policy.algorithm, now)
            changes.append(first.moved_to(KeyState.CURRENT, activated_ms=now))
        if self.next is None:
            changes.append(generate_signing_key(self._policy.algorithm, now))
        if changes:
            await self._commit(changes)

    async def _commit(self, changes: list[SigningKey]) -> None:
        claimed_at = self._clock()
        async with self._store.transaction() as tx:
            if not await tx.claim_keyring_version(self._version):
                raise Aborted(
                    "another replica changed the keyring; retry",
                    reason="KEYRING_CHANGED",
                )
            for key in changes:
                await tx.save_key(self._to_row(key))
        keys = dict(self._keys)
        keys.update({key.key_id: key for key in changes})
        self._install(self._version + 1, keys)
        self._confirmed_at = claimed_at

    def _install(self, version: int, keys: dict[str, SigningKey]) -> None:
        current = [key for key in keys.values() if key.state is KeyState.CURRENT]
        if len(current) > 1:
            logger.error(
                "the store holds %s current keys; using the newest", len(current)
            )
        published = sorted(
            (key for key in keys.values() if key.state in PUBLISHED_STATES),
            key=lambda k: (_publish_order(k.state), -k.created_ms),
        )
        self._version = version
        self._keys = keys
        self._current = max(current, key=lambda k: k.activated_ms or 0, default=None)
        self._verification = {
            key.key_id: VerificationKey(key.algorithm, key.public_key)
            for key in published
        }
        self._jwks = {"keys": [dict(key.public_jwk) for key in published]}
        self._jwks_json = json.dumps(self._jwks, separators=(",", ":")).encode()

    def _retired(self, key: SigningKey, now: int, retire_ms: int) -> SigningKey:
        retired = key.moved_to(
            KeyState.RETIRED,
            deactivated_ms=key.deactivated_ms or now,
            retire_ms=retire_ms,
        )
        return _without_private_key(retired)

    def _from_row(self, row: KeyRow) -> SigningKey:
        state = KeyState(row.state)
        known = self._keys.get(row.key_id)
        private_key = None
        if row.sealed_private_key and state in (KeyState.NEXT, KeyState.CURRENT):
            if known is not None and known.private_key is not None:
                private_key = known.private_key  # already unsealed
            else:
                der = self._master_key.open(
                    row.sealed_private_key, seal_context(row.key_id, row.algorithm)
                )
                private_key = load_private_key(der, row.algorithm)
        return SigningKey(
            key_id=row.key_id,
            algorithm=row.algorithm,
            state=state,
            public_jwk=row.public_jwk,
            private_key=private_key,
            created_ms=row.created_ms,
            activated_ms=row.activated_ms,
            deactivated_ms=row.deactivated_ms,
            retire_ms=row.retire_ms,
        )

    def _to_row(self, key: SigningKey) -> KeyRow:
        sealed = None
        if key.private_key is not None:
            sealed = self._master_key.seal(
                private_key_bytes(key.private_key),
                seal_context(key.key_id, key.algorithm),
            )
        return KeyRow(
            key_id=key.key_id,
            algorithm=key.algorithm,
            state=key.state.value,
            public_jwk=key.public_jwk,
            sealed_private_key=sealed,
            created_ms=key.created_ms,
            activated_ms=key.activated_ms,
            deactivated_ms=key.deactivated_ms,
            retire_ms=key.retire_ms,
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _without_private_key(key: SigningKey) -> SigningKey:
    # A key that will never sign again need not be able to.
    return replace(key, private_key=None)


def _publish_order(state: KeyState) -> int:
    return {KeyState.CURRENT: 0, KeyState.NEXT: 1, KeyState.RETIRING: 2}.get(state, 3)
