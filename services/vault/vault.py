"""The secrets domain: versioned writes, reads, listings, soft and hard deletion.

Every write runs in one transaction with its audit event. Reads remember the
encrypted row they served, so that during a database outage the same read can
be answered from memory for a bounded time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from services.vault.audit import (
    OUTCOME_SUCCESS,
    AuditEntry,
    AuditLog,
    ReadContinuation,
)
from services.vault.degraded import DatabaseHealth, ReadCache
from services.vault.envelope import EnvelopeCipher, value_hmac
from services.vault.errors import DataLoss
from services.vault.fallback import FallbackSecrets
from services.vault.records import ReadResult, SecretRecord, VersionRecord
from services.vault.store import VaultStore
from shared.db import Executor
from shared.errors import Aborted, FailedPrecondition, NotFound, Unavailable

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
T = TypeVar("T")
Mutation = Callable[
    [Executor, SecretRecord | None, int], Awaitable[tuple[list[AuditEntry], T]]
]


@dataclass(frozen=True)
class Plaintext:
    """A decrypted version, handed to the caller and never stored."""

    key_id: str
    version: int
    value: bytes
    secret_type: int
    create_time_ms: int
    stale: bool
    source: str = "database"


@dataclass(frozen=True)
class NewValue:
    key_id: str
    value: bytes
    expected_version: int | None


class SecretVault:
    def __init__(
        self,
        store: VaultStore,
        cipher: EnvelopeCipher,
        audit: AuditLog,
        hmac_key: bytes,
        cache: ReadCache,
        health: DatabaseHealth,
        max_versions: int,
        fallback: FallbackSecrets,
        reload_keyring: Callable[[], Awaitable[None]] | None = None,
        read_patience_seconds: float | None = None,
    ) -> None:
        self._store = store
        self._cipher = cipher
        self._audit = audit
        self._hmac_key = hmac_key
        self._cache = cache
        self._health = health
        self._max_versions = max_versions
        self._fallback = fallback
        self._reload = reload_keyring
        # How long a read held in memory waits for the database (a stalled
        # network answers nothing until the statement timeout) before it is
        # served from memory as during an outage.
        self._read_patience = read_patience_seconds

    def digest(self, value: bytes) -> str:
        return value_hmac(self._hmac_key, value)

    # Writes -----------------------------------------------------------------

    async def put(
        self,
        actor: str,
        new: NewValue,
        secret_type: int,
        labels: dict[str, str],
        rotation_days: int,
    ) -> tuple[SecretRecord, int]:
        async def mutate(
            tx: Executor, current: SecretRecord | None, now: int
        ) -> tuple[list[AuditEntry], tuple[SecretRecord, VersionRecord]]:
            _check_expected(current, new.expected_version)
            if current is not None and current.deleted:
                raise _deleted_precondition()
            secret, record = await self._write_version(
                tx, current, new, secret_type, labels, rotation_days, now
            )
            entry = self._entry(actor, "PutSecret", secret, new.value)
            return [entry], (secret, record)

        return self._remember_written(await self._write(new.key_id, mutate))

    async def rotate(self, actor: str, new: NewValue) -> tuple[SecretRecord, int]:
        async def mutate(
            tx: Executor, current: SecretRecord | None, now: int
        ) -> tuple[list[AuditEntry], tuple[SecretRecord, VersionRecord]]:
            if current is None:
                raise _not_found()
            if current.deleted:
                raise _deleted_precondition()
            _check_expected(current, new.expected_version)
            secret, record = await self._write_version(
                tx,
                current,
                new,
                current.secret_type,
                current.labels,
                current.rotation_frequency_days,
                now,
            )
            entry = self._entry(actor, "RotateSecret", secret, new.value)
            return [entry], (secret, record)

        return self._remember_written(await self._write(new.key_id, mutate))

    async def delete(self, actor: str, key_id: str) -> SecretRecord:
        async def mutate(
            tx: Executor, current: SecretRecord | None, now: int
        ) -> tuple[list[AuditEntry], SecretRecord]:
            if current is None or current.deleted:
                raise _not_found() if current is None else _deleted()
            secret = _replace(current, delete_time_ms=now)
            await self._store.update_secret(tx, secret)
            return [AuditEntry(actor, "DeleteSecret", key_id)], secret

        return await self._write(key_id, mutate)

    async def undelete(self, actor: str, key_id: str) -> SecretRecord:
        async def mutate(
            tx: Executor, current: SecretRecord | None, now: int
        ) -> tuple[list[AuditEntry], SecretRecord]:
            if current is None:
                raise _not_found()
            if not current.deleted:
                raise FailedPrecondition(
                    "the secret is not deleted", reason="SECRET_NOT_DELETED"
                )
            secret = _replace(current, delete_time_ms=None)
            await self._store.update_secret(tx, secret)
            return [AuditEntry(actor, "UndeleteSecret", key_id)], secret

        return await self._write(key_id, mutate)

    async def destroy(
        self, actor: str, key_id: str, numbers: Sequence[int]
    ) -> list[VersionRecord]:
        async def mutate(
            tx: Executor, current: SecretRecord | None, now: int
        ) -> tuple[list[AuditEntry], list[VersionRecord]]:
            if current is None:
                raise _not_found()
            found = await self._store.versions(tx, key_id, numbers)
            missing = [number for number in numbers if number not in found]
            if missing:
                raise NotFound(
                    f"the secret has no version {missing[0]}",
                    reason="VERSION_NOT_FOUND",
                    metadata={"version": str(missing[0])},
                )
            await self._store.destroy_versions(tx, key_id, numbers, now)
            after = await self._store.versions(tx, key_id, numbers)
            entries = [
                AuditEntry(actor, "DestroySecretVersions", key_id, number)
                for number in numbers
            ]
            return entries, [after[number] for number in numbers]

        return await self._write(key_id, mutate)

    async def _write(self, key_id: str, mutate: Mutation[T]) -> T:
        self._refuse_if_degraded()

        async def job(tx: Executor) -> tuple[list[AuditEntry], T]:
            # Writers queued during an outage give up at once rather than
            # each wait out a connection timeout.
            self._refuse_if_degraded()
            current = await self._store.secret_for_update(tx, key_id)
            return await mutate(tx, current, _now_ms())

        try:
            result: T = await self._audit.write(job)
        except Unavailable:
            self._health.mark_down()
            raise
        self._cache.forget(key_id)
        return result

    async def _write_version(
        self,
        tx: Executor,
        current: SecretRecord | None,
        new: NewValue,
        secret_type: int,
        labels: dict[str, str],
        rotation_days: int,
        now: int,
    ) -> tuple[SecretRecord, VersionRecord]:
        version = (current.current_version if current else 0) + 1
        oldest_before = current.oldest_version if current else 1
        oldest = max(oldest_before, version - self._max_versions + 1)
        secret = SecretRecord(
            key_id=new.key_id,
            secret_type=secret_type,
            labels=labels,
            rotation_frequency_days=rotation_days,
            current_version=version,
            oldest_version=oldest,
            create_time_ms=current.create_time_ms if current else now,
            update_time_ms=now,
            next_rotation_ms=now + rotation_days * DAY_MS if rotation_days else None,
            delete_time_ms=None,
        )
        # The audit log's batch has already learned, under the chain lock, any
        # master key another replica added: this seals with the newest one.
        sealed = self._cipher.seal(new.key_id, version, new.value)
        if current is None:
            await self._store.insert_secret(tx, secret)
        else:
            await self._store.update_secret(tx, secret)
        await self._store.insert_version(tx, new.key_id, version, sealed, now)
        if oldest > oldest_before:
            await self._store.prune_versions(tx, new.key_id, oldest)
        return secret, VersionRecord(new.key_id, version, sealed, now, None)

    def _remember_written(
        self, written: tuple[SecretRecord, VersionRecord]
    ) -> tuple[SecretRecord, int]:
        # A write is as good as a read for the outage copy: the version just
        # written is the one a reader would get.
        secret, record = written
        self._cache.remember(secret.key_id, 0, secret.secret_type, record)
        return secret, record.version

    def _entry(
        self, actor: str, action: str, secret: SecretRecord, value: bytes
    ) -> AuditEntry:
        return AuditEntry(
            actor,
            action,
            secret.key_id,
            secret.current_version,
            OUTCOME_SUCCESS,
            value_hmac=self.digest(value),
        )

    # Reads ------------------------------------------------------------------

    async def get(self, actor: str, key_id: str, version: int) -> Plaintext:
        if self._health.degraded:
            # The probe, not each reader, finds out when the database is back.
            return await self._get_from_memory(actor, key_id, version)

        def then(result: ReadResult | None) -> tuple[list[AuditEntry], Plaintext]:
            # Runs in the audit log's group commit: a burst of reads shares one
            # query and one transaction for the rows and their events.
            if result is None:
                raise _not_found()
            if result.secret.deleted:
                raise _deleted()
            record = _readable(result.version, version)
            plaintext = self._open(record)
            self._cache.remember(key_id, version, result.secret.secret_type, record)
            entry = AuditEntry(
                actor,
                "GetSecret",
                key_id,
                record.version,
                value_hmac=self.digest(plaintext),
            )
            return [entry], Plaintext(
                key_id,
                record.version,
                plaintext,
                result.secret.secret_type,
                record.create_time_ms,
                stale=False,
            )

        try:
            plain: Plaintext = await self._read_with_fresh_keyring(
                key_id, version, then, self._patience_for(key_id, version)
            )
        except Unavailable:
            self._health.mark_down()
            return await self._get_from_memory(actor, key_id, version)
        except NotFound as error:
            fallback = None
            if error.reason == "SECRET_NOT_FOUND":
                fallback = self._from_fallback(actor, key_id, version)
            if fallback is None:
                raise
            entry, plain = fallback
            await self._record_or_spool(entry)
            return plain
        return plain

    def _patience_for(self, key_id: str, version: int) -> float | None:
        if self._cache.lookup(key_id, version) is None:
            return None  # nothing to fall back on: wait for the database
        return self._read_patience

    async def _read_with_fresh_keyring(
        self, key_id: str, version: int, then: ReadContinuation, patience: float | None
    ) -> Plaintext:
        async def read() -> Plaintext:
            plain: Plaintext = await self._audit.read(
                key_id, version, then, patience, on_stall=self._health.mark_down
            )
            return plain

        try:
            return await read()
        except DataLoss as error:
            if error.reason != "MASTER_KEY_VERSION_UNKNOWN" or self._reload is None:
                raise
            # Another replica rotated the master key: learn the new version.
            await self._reload()
            return await read()

    def _from_fallback(
        self, actor: str, key_id: str, version: int
    ) -> tuple[AuditEntry, Plaintext] | None:
        found = self._fallback.lookup(key_id) if version == 0 else None
        if found is None:
            return None
        value, source = found
        entry = AuditEntry(
            actor,
            "GetSecret",
            key_id,
            0,
            reason=f"FROM_{source.upper()}",
            value_hmac=self.digest(value),
        )
        return entry, Plaintext(key_id, 0, value, 0, 0, stale=False, source=source)

    async def _record_or_spool(self, entry: AuditEntry) -> None:
        try:
            await self._audit.record(entry)
        except Unavailable:
            self._health.mark_down()
            if not self._audit.spool(entry):
                raise

    async def _get_from_memory(
        self, actor: str, key_id: str, version: int
    ) -> Plaintext:
        cached = self._cache.lookup(key_id, version)
        fallback = (
            self._from_fallback(actor, key_id, version) if cached is None else None
        )
        if fallback is not None:
            if not self._audit.spool(fallback[0]):
                raise _audit_full()
            return fallback[1]
        if cached is None:
            raise Unavailable(
                "the vault database is unreachable and this secret was not read"
                " recently",
                reason="DATABASE_UNAVAILABLE",
            )
        record = cached.version
        plaintext = self._open(record)
        entry = AuditEntry(
            actor,
            "GetSecret",
            key_id,
            record.version,
            value_hmac=self.digest(plaintext),
        )
        if not self._audit.spool(entry):
            raise _audit_full()
        return Plaintext(
            key_id,
            record.version,
            plaintext,
            cached.secret_type,
            record.create_time_ms,
            stale=True,
            source="memory",
        )

    def _open(self, record: VersionRecord) -> bytes:
        assert record.sealed is not None
        return self._cipher.open(record.key_id, record.version, record.sealed)

    async def list_secrets(
        self, prefix: str, after: str, limit: int, show_deleted: bool
    ) -> list[SecretRecord]:
        return await self._guarded(
            self._store.list_secrets(prefix, after, limit, show_deleted)
        )

    async def list_due(
        self, prefix: str, within_days: int, after: tuple[int, str], limit: int
    ) -> list[SecretRecord]:
        due_before = _now_ms() + within_days * DAY_MS
        return await self._guarded(
            self._store.list_due(prefix, due_before, after, limit)
        )

    async def record(self, entry: AuditEntry) -> None:
        try:
            await self._audit.record(entry)
        except Unavailable:
            self._health.mark_down()
            raise

    def _refuse_if_degraded(self) -> None:
        if self._health.degraded:
            raise Unavailable(
                "the vault database is unreachable", reason="DATABASE_UNAVAILABLE"
            )

    async def _guarded(self, work: Awaitable[T]) -> T:
        self._refuse_if_degraded()
        try:
            return await work
        except Unavailable:
            self._health.mark_down()
            raise


def _readable(record: VersionRecord | None, requested: int) -> VersionRecord:
    if record is None:
        raise NotFound(
            f"the secret has no version {requested}",
            reason="VERSION_NOT_FOUND",
            metadata={"version": str(requested)},
        )
    if record.sealed is None:
        raise NotFound(
            f"version {record.version} was destroyed",
            reason="VERSION_DESTROYED",
            metadata={"version": str(record.version)},
        )
    return record


def _check_expected(current: SecretRecord | None, expected: int | None) -> None:
    if expected is None:
        return
    actual = current.current_version if current else 0
    if actual != expected:
        raise Aborted(
            f"the secret's current version is {actual}, not {expected}",
            reason="VERSION_MISMATCH",
            metadata={"current_version": str(actual)},
        )


def _audit_full() -> Unavailable:
    return Unavailable(
        "the audit log cannot hold more events until the database is back",
        reason="AUDIT_UNAVAILABLE",
    )


def _not_found() -> NotFound:
    return NotFound("no secret has this key id", reason="SECRET_NOT_FOUND")


def _deleted() -> NotFound:
    return NotFound("the secret is deleted", reason="SECRET_DELETED")


def _deleted_precondition() -> FailedPrecondition:
    return FailedPrecondition(
        "the secret is deleted; undelete it first", reason="SECRET_DELETED"
    )


def _replace(secret: SecretRecord, *, delete_time_ms: int | None) -> SecretRecord:
    return replace(secret, delete_time_ms=delete_time_ms)


def _now_ms() -> int:
    return int(time.time() * 1000)
