"""The vault's tables, on PostgreSQL or SQLite through `shared.db`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.vault.envelope import SealedValue
from services.vault.records import (
    AuditRecord,
    ReadResult,
    SecretRecord,
    VersionRecord,
)
from shared.db import (
    DEFAULT_STATEMENT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    Database,
    Executor,
    Row,
    open_database,
)

MIGRATIONS = Path(__file__).parent / "migrations"
GENESIS_HASH = "0" * 64
# Well below the statement timeout: a wait that long would be taken for an
# unreachable database, and put the replica in outage mode.
_MAX_HEAD_WAIT_SECONDS = DEFAULT_STATEMENT_TIMEOUT_S / 2
_HEAD_TIMEOUTS = (
    "SELECT set_config('lock_timeout', %s, true),"
    " set_config('idle_in_transaction_session_timeout', %s, true)"
)

_SECRET_COLUMNS = (
    "s.key_id, s.secret_type, s.labels, s.rotation_frequency_days,"
    " s.current_version, s.oldest_version, s.create_time_ms, s.update_time_ms,"
    " s.next_rotation_ms, s.delete_time_ms"
)
_VERSION_COLUMNS = (
    "v.key_id, v.version, v.master_version, v.wrapped_key, v.ciphertext,"
    " v.create_time_ms, v.destroy_time_ms"
)
_AUDIT_COLUMNS = (
    "sequence, time_ms, actor, action, key_id, version, outcome, reason,"
    " value_hmac, previous_hash, hash"
)
# The audit columns' types, in `_AUDIT_COLUMNS` order, as PostgreSQL arrays.
_AUDIT_ARRAYS = (
    "%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::bigint[],"
    " %s::integer[], %s::text[], %s::text[], %s::text[], %s::text[]"
)
# 11 values each: well under SQLite's default cap of 32766 bound values.
_SQLITE_EVENTS_PER_STATEMENT = 1000
# One round trip for a read: the secret and the version asked for (0: latest).
_READ = (
    f"SELECT {_SECRET_COLUMNS}, {_VERSION_COLUMNS} FROM vault_secrets s"
    " LEFT JOIN vault_versions v ON v.key_id = s.key_id AND v.version ="
    " (CASE WHEN %s = 0 THEN s.current_version ELSE %s END)"
    " WHERE s.key_id = %s"
)


async def open_store(
    url: str, timeout_seconds: float = DEFAULT_TIMEOUT_S
) -> VaultStore:
    """`timeout_seconds` bounds connecting, waiting for a pooled connection and
    waiting for the audit chain's head."""
    database = await open_database(url, MIGRATIONS, timeout_s=timeout_seconds)
    return VaultStore(database, head_wait_seconds=timeout_seconds)


class VaultStore:
    """Every query the vault makes; callers pass a transaction where they hold one."""

    def __init__(
        self, db: Database, head_wait_seconds: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.db = db
        wait_ms = max(1, round(min(head_wait_seconds, _MAX_HEAD_WAIT_SECONDS) * 1000))
        # (lock_timeout, idle_in_transaction_session_timeout) of a transaction
        # that holds the head.
        self._head_timeouts = (f"{wait_ms}ms", f"{2 * wait_ms}ms")

    @property
    def dialect(self) -> str:
        return self.db.dialect

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.fetchone("SELECT 1")

    # The keyring ---------------------------------------------------------

    async def master_keys(
        self, after: int = 0, tx: Executor | None = None
    ) -> list[tuple[int, bytes]]:
        """The keyring's rows above version `after`, in version order."""
        rows = await (tx or self.db).fetchall(
            "SELECT version, wrapped_key FROM vault_master_keys WHERE version > %s"
            " ORDER BY version",
            (after,),
        )
        return [(int(version), bytes(wrapped)) for version, wrapped in rows]

    async def insert_master_key(
        self, version: int, wrapped: bytes, now_ms: int, tx: Executor | None = None
    ) -> None:
        """Raises `UniqueViolation` if another replica added this version first."""
        await (tx or self.db).execute(
            "INSERT INTO vault_master_keys (version, wrapped_key, create_time_ms)"
            " VALUES (%s, %s, %s)",
            (version, wrapped, now_ms),
        )

    # Secrets --------------------------------------------------------------

    async def read(
        self, key_id: str, version: int, tx: Executor | None = None
    ) -> ReadResult | None:
        row = await (tx or self.db).fetchone(_READ, (version, version, key_id))
        if row is None:
            return None
        return ReadResult(_secret(row[:10]), _version(row[10:]))

    async def read_many(
        self, tx: Executor, wanted: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], ReadResult]:
        """Several (key id, version) reads in one query; missing secrets are absent."""
        pairs = list(dict.fromkeys(wanted))
        params: list[Any]
        if self.db.dialect == "postgres":
            # Two arrays, whatever the batch size: one statement text that
            # psycopg caches and PostgreSQL keeps prepared.
            wanted_rows = "SELECT * FROM unnest(%s::text[], %s::bigint[])"
            params = [[key for key, _ in pairs], [version for _, version in pairs]]
        else:
            wanted_rows = "VALUES " + ", ".join(["(%s, %s)"] * len(pairs))
            params = [value for pair in pairs for value in pair]
        rows = await tx.fetchall(
            f"WITH wanted (key_id, version) AS ({wanted_rows})"
            f" SELECT w.key_id, w.version, {_SECRET_COLUMNS}, {_VERSION_COLUMNS}"
            " FROM wanted w JOIN vault_secrets s ON s.key_id = w.key_id"
            " LEFT JOIN vault_versions v ON v.key_id = s.key_id AND v.version ="
            " (CASE WHEN w.version = 0 THEN s.current_version ELSE w.version END)",
            params,
        )
        return {
            (row[0], int(row[1])): ReadResult(_secret(row[2:12]), _version(row[12:]))
            for row in rows
        }

    async def secret_for_update(self, tx: Executor, key_id: str) -> SecretRecord | None:
        lock = " FOR UPDATE" if self.db.dialect == "postgres" else ""
        row = await tx.fetchone(
            f"SELECT {_SECRET_COLUMNS} FROM vault_secrets s WHERE s.key_id = %s{lock}",
            (key_id,),
        )
        return None if row is None else _secret(row)

    async def insert_secret(self, tx: Executor, secret: SecretRecord) -> None:
        await tx.execute(
            "INSERT INTO vault_secrets (key_id, secret_type, labels,"
            " rotation_frequency_days, current_version, oldest_version,"
            " create_time_ms, update_time_ms, next_rotation_ms, delete_time_ms)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            _secret_params(secret),
        )

    async def update_secret(self, tx: Executor, secret: SecretRecord) -> None:
        await tx.execute(
            "UPDATE vault_secrets SET secret_type = %s, labels = %s,"
            " rotation_frequency_days = %s, current_version = %s,"
            " oldest_version = %s, create_time_ms = %s, update_time_ms = %s,"
            " next_rotation_ms = %s, delete_time_ms = %s WHERE key_id = %s",
            (*_secret_params(secret)[1:], secret.key_id),
        )

    async def insert_version(
        self, tx: Executor, key_id: str, version: int, sealed: SealedValue, now_ms: int
    ) -> None:
        await tx.execute(
            "INSERT INTO vault_versions (key_id, version, master_version,"
            " wrapped_key, ciphertext, create_time_ms, destroy_time_ms)"
            " VALUES (%s, %s, %s, %s, %s, %s, NULL)",
            (
                key_id,
                version,
                sealed.master_version,
                sealed.wrapped_key,
                sealed.ciphertext,
                now_ms,
            ),
        )

    async def prune_versions(self, tx: Executor, key_id: str, below: int) -> None:
        await tx.execute(
            "DELETE FROM vault_versions WHERE key_id = %s AND version < %s",
            (key_id, below),
        )

    async def versions(
        self, tx: Executor, key_id: str, numbers: Sequence[int]
    ) -> dict[int, VersionRecord]:
        marks = ", ".join(["%s"] * len(numbers))
        rows = await tx.fetchall(
            f"SELECT {_VERSION_COLUMNS} FROM vault_versions v"
            f" WHERE v.key_id = %s AND v.version IN ({marks})",
            (key_id, *numbers),
        )
        records = [_version(row) for row in rows]
        return {record.version: record for record in records if record is not None}

    async def destroy_versions(
        self, tx: Executor, key_id: str, numbers: Sequence[int], now_ms: int
    ) -> None:
        marks = ", ".join(["%s"] * len(numbers))
        await tx.execute(
            "UPDATE vault_versions SET wrapped_key = NULL, ciphertext = NULL,"
            " destroy_time_ms = %s"
            f" WHERE key_id = %s AND version IN ({marks}) AND destroy_time_ms IS NULL",
            (now_ms, key_id, *numbers),
        )

    async def list_secrets(
        self, prefix: str, after: str, limit: int, show_deleted: bool
    ) -> list[SecretRecord]:
        deleted = "" if show_deleted else " AND s.delete_time_ms IS NULL"
        rows = await self.db.fetchall(
            f"SELECT {_SECRET_COLUMNS} FROM vault_secrets s"
            " WHERE substr(s.key_id, 1, %s) = %s AND s.key_id > %s"
            f"{deleted} ORDER BY s.key_id LIMIT %s",
            (len(prefix), prefix, after, limit),
        )
        return [_secret(row) for row in rows]

    async def list_due(
        self, prefix: str, due_before_ms: int, after: tuple[int, str], limit: int
    ) -> list[SecretRecord]:
        after_ms, after_key = after
        rows = await self.db.fetchall(
            f"SELECT {_SECRET_COLUMNS} FROM vault_secrets s"
            " WHERE s.next_rotation_ms IS NOT NULL AND s.next_rotation_ms <= %s"
            " AND s.delete_time_ms IS NULL AND substr(s.key_id, 1, %s) = %s"
            " AND (s.next_rotation_ms > %s"
            " OR (s.next_rotation_ms = %s AND s.key_id > %s))"
            " ORDER BY s.next_rotation_ms, s.key_id LIMIT %s",
            (
                due_before_ms,
                len(prefix),
                prefix,
                after_ms,
                after_ms,
                after_key,
                limit,
            ),
        )
        return [_secret(row) for row in rows]

    # The master-key rewrap -------------------------------------------------

    async def versions_to_rewrap(
        self,
        target: int,
        limit: int,
        after: tuple[str, int] = ("", 0),
        tx: Executor | None = None,
    ) -> list[VersionRecord]:
        """Live versions wrapped before `target`, in (key id, version) order
        from just after `after`."""
        after_key, after_version = after
        rows = await (tx or self.db).fetchall(
            f"SELECT {_VERSION_COLUMNS} FROM vault_versions v"
            " WHERE v.master_version < %s AND v.wrapped_key IS NOT NULL"
            " AND (v.key_id > %s OR (v.key_id = %s AND v.version > %s))"
            " ORDER BY v.key_id, v.version LIMIT %s",
            (target, after_key, after_key, after_version, limit),
        )
        return [record for record in map(_version, rows) if record is not None]

    async def store_rewrapped(
        self, tx: Executor, record: VersionRecord, sealed: SealedValue
    ) -> None:
        # Only if nobody changed the row since it was read (destroyed, rewrapped).
        assert record.sealed is not None
        await tx.execute(
            "UPDATE vault_versions SET master_version = %s, wrapped_key = %s"
            " WHERE key_id = %s AND version = %s AND master_version = %s"
            " AND wrapped_key IS NOT NULL",
            (
                sealed.master_version,
                sealed.wrapped_key,
                record.key_id,
                record.version,
                record.sealed.master_version,
            ),
        )

    async def rewrap_counts(self, target: int) -> tuple[int, int]:
        """(versions wrapped by `target` or later, live versions in all)."""
        row = await self.db.fetchone(
            "SELECT COALESCE(SUM(CASE WHEN master_version >= %s THEN 1 ELSE 0 END), 0),"
            " COUNT(*) FROM vault_versions WHERE wrapped_key IS NOT NULL",
            (target,),
        )
        assert row is not None
        return int(row[0]), int(row[1])

    # The audit chain -------------------------------------------------------

    async def lock_audit_head(self, tx: Executor) -> tuple[int, str]:
        """The chain head, locked until `tx` ends.

        Every transaction that appends to the chain or writes secrets' rows
        takes this first, so those of several replicas queue one after another
        instead of colliding on a sequence number or deadlocking on each
        other's rows; on SQLite the write lock of `BEGIN IMMEDIATE` already
        serialises them.

        On PostgreSQL both sides of the queue are bounded, so one stuck
        replica cannot stall the others: a wait past the head wait raises
        `Aborted` (DATABASE_CONFLICT, as a deadlock does), and PostgreSQL ends
        the session of a holder left idle in its transaction for twice as long.
        """
        if self.db.dialect != "postgres":
            return await self.audit_head(tx) or (0, GENESIS_HASH)
        await tx.execute(_HEAD_TIMEOUTS, self._head_timeouts)
        lock = "SELECT sequence, hash FROM vault_audit_head WHERE id = 1 FOR UPDATE"
        row = await tx.fetchone(lock)
        if row is None:
            # A new (or just restored) vault: create the row there is to lock.
            await tx.execute(
                "INSERT INTO vault_audit_head (id, sequence, hash)"
                " VALUES (1, 0, %s) ON CONFLICT (id) DO NOTHING",
                (GENESIS_HASH,),
            )
            row = await tx.fetchone(lock)
        assert row is not None
        return int(row[0]), str(row[1])

    async def audit_head(self, tx: Executor | None = None) -> tuple[int, str] | None:
        row = await (tx or self.db).fetchone(
            "SELECT sequence, hash FROM vault_audit_head WHERE id = 1"
        )
        return None if row is None else (int(row[0]), str(row[1]))

    async def append_audit(self, tx: Executor, events: Sequence[AuditRecord]) -> None:
        """Inserts chained events and moves the head; the caller holds the chain."""
        last = events[-1]
        move_head = (
            "INSERT INTO vault_audit_head (id, sequence, hash) VALUES (1, %s, %s)"
            " ON CONFLICT (id) DO UPDATE"
            " SET sequence = excluded.sequence, hash = excluded.hash"
        )
        if self.db.dialect == "postgres":
            # One round trip (both inserts in one statement) and one statement
            # text for any batch size (a column per array), so it stays prepared.
            columns = list(
                zip(*(_audit_params(event) for event in events), strict=True)
            )
            await tx.execute(
                f"WITH appended AS (INSERT INTO vault_audit_events ({_AUDIT_COLUMNS})"
                f" SELECT * FROM unnest({_AUDIT_ARRAYS})) {move_head}",
                [*(list(column) for column in columns), last.sequence, last.hash],
            )
            return
        row = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        # In slices, as SQLite caps the values one statement binds (32766 in
        # its default build): a spool flush or a batch of large destroys
        # holds more events than one statement could take.
        for start in range(0, len(events), _SQLITE_EVENTS_PER_STATEMENT):
            chunk = events[start : start + _SQLITE_EVENTS_PER_STATEMENT]
            await tx.execute(
                f"INSERT INTO vault_audit_events ({_AUDIT_COLUMNS})"
                f" VALUES {', '.join([row] * len(chunk))}",
                [value for event in chunk for value in _audit_params(event)],
            )
        await tx.execute(move_head, (last.sequence, last.hash))

    async def audit_events(
        self, filters: dict[str, Any], after: int, limit: int
    ) -> list[AuditRecord]:
        clauses, params = ["sequence > %s"], [after]
        for column, operator in (
            ("key_id", "="),
            ("actor", "="),
            ("action", "="),
            ("outcome", "="),
        ):
            if filters.get(column):
                clauses.append(f"{column} {operator} %s")
                params.append(filters[column])
        if filters.get("start_ms") is not None:
            clauses.append("time_ms >= %s")
            params.append(filters["start_ms"])
        if filters.get("end_ms") is not None:
            clauses.append("time_ms < %s")
            params.append(filters["end_ms"])
        rows = await self.db.fetchall(
            f"SELECT {_AUDIT_COLUMNS} FROM vault_audit_events"
            f" WHERE {' AND '.join(clauses)} ORDER BY sequence LIMIT %s",
            (*params, limit),
        )
        return [_audit(row) for row in rows]

    # Backup and restore ----------------------------------------------------

    async def dump(self) -> dict[str, list[Row]]:
        """Every row of every vault table, read in one transaction."""
        tables: dict[str, list[Row]] = {}
        async with self.db.transaction() as tx:
            if self.db.dialect == "postgres":
                # One snapshot for every table: under the default READ
                # COMMITTED each SELECT would see the writes committed before
                # it, and a chain read before a write that moves the head
                # would not match the head read after it. (SQLite's
                # BEGIN IMMEDIATE already keeps writers out.)
                await tx.execute(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                )
            for table, columns in _TABLES.items():
                tables[table] = await tx.fetchall(
                    f"SELECT {columns} FROM {table} ORDER BY {columns.split(',')[0]}"
                )
        return tables

    async def replace_all(
        self, tx: Executor, tables: Mapping[str, Sequence[Sequence[Any]]]
    ) -> None:
        """Replaces the content of every vault table inside the caller's transaction."""
        for table in _TABLES:
            await tx.execute(f"DELETE FROM {table}")
        for table, columns in _TABLES.items():
            marks = ", ".join(["%s"] * len(columns.split(",")))
            for row in tables[table]:
                await tx.execute(
                    f"INSERT INTO {table} ({columns}) VALUES ({marks})", row
                )

    async def count_secrets(self, tx: Executor | None = None) -> int:
        row = await (tx or self.db).fetchone("SELECT COUNT(*) FROM vault_secrets")
        assert row is not None
        return int(row[0])


# Column lists of each table, in backup order (the keyring first).
_TABLES = {
    "vault_master_keys": "version, wrapped_key, create_time_ms",
    "vault_secrets": _SECRET_COLUMNS.replace("s.", ""),
    "vault_versions": _VERSION_COLUMNS.replace("v.", ""),
    "vault_audit_events": _AUDIT_COLUMNS,
    "vault_audit_head": "id, sequence, hash",
}
BACKUP_TABLES = _TABLES


def _secret(row: Row) -> SecretRecord:
    return SecretRecord(
        key_id=row[0],
        secret_type=int(row[1]),
        labels=json.loads(row[2]),
        rotation_frequency_days=int(row[3]),
        current_version=int(row[4]),
        oldest_version=int(row[5]),
        create_time_ms=int(row[6]),
        update_time_ms=int(row[7]),
        next_rotation_ms=None if row[8] is None else int(row[8]),
        delete_time_ms=None if row[9] is None else int(row[9]),
    )


def _secret_params(secret: SecretRecord) -> tuple[Any, ...]:
    return (
        secret.key_id,
        secret.secret_type,
        json.dumps(secret.labels, sort_keys=True),
        secret.rotation_frequency_days,
        secret.current_version,
        secret.oldest_version,
        secret.create_time_ms,
        secret.update_time_ms,
        secret.next_rotation_ms,
        secret.delete_time_ms,
    )


def _version(row: Row) -> VersionRecord | None:
    key_id, version, master_version, wrapped, ciphertext, created, destroyed = row
    if key_id is None:
        return None
    sealed = None
    if wrapped is not None and ciphertext is not None:
        sealed = SealedValue(int(master_version), bytes(wrapped), bytes(ciphertext))
    return VersionRecord(
        key_id=key_id,
        version=int(version),
        sealed=sealed,
        create_time_ms=int(created),
        destroy_time_ms=None if destroyed is None else int(destroyed),
    )


def _audit(row: Row) -> AuditRecord:
    return AuditRecord(
        sequence=int(row[0]),
        time_ms=int(row[1]),
        actor=row[2],
        action=row[3],
        key_id=row[4],
        version=int(row[5]),
        outcome=int(row[6]),
        reason=row[7],
        value_hmac=row[8],
        previous_hash=row[9],
        hash=row[10],
    )


def _audit_params(event: AuditRecord) -> tuple[Any, ...]:
    return (
        event.sequence,
        event.time_ms,
        event.actor,
        event.action,
        event.key_id,
        event.version,
        event.outcome,
        event.reason,
        event.value_hmac,
        event.previous_hash,
        event.hash,
    )
