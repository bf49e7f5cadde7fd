"""The database facade behaves the same on PostgreSQL and SQLite, and survives
a database outage without a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest

from shared.db import (
    Database,
    UniqueViolation,
    load_migrations,
    open_database,
    sqlite_path,
    to_sqlite_placeholders,
)
from shared.errors import Aborted, Unavailable
from tests.harness.db_fixtures import FaultProxyFactory
from tests.harness.fault_proxy import host_port

HANG_GUARD_S = 5.0

MIGRATION_1 = """
-- Secrets, one row per version.
CREATE TABLE secrets (
    key_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    value BLOB NOT NULL,
    note TEXT,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE labels (key_id TEXT NOT NULL, label TEXT NOT NULL);
"""


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "vault" / "migrations"
    directory.mkdir(parents=True)
    (directory / "001_secrets.sql").write_text(MIGRATION_1)
    (directory / "002_dialect.postgres.sql").write_text(
        "CREATE TABLE only_postgres (id TEXT PRIMARY KEY);"
    )
    (directory / "002_dialect.sqlite.sql").write_text(
        "CREATE TABLE only_sqlite (id TEXT PRIMARY KEY);"
    )
    return directory


@pytest.fixture
async def db(database_url: str, migrations_dir: Path) -> AsyncIterator[Database]:
    database = await open_database(database_url, migrations_dir)
    yield database
    await database.close()


async def test_insert_select_update_delete(db: Database) -> None:
    inserted = await db.execute(
        "INSERT INTO secrets (key_id, version, value) VALUES (%s, %s, %s)",
        ("llm/openai", 1, b"v1"),
    )
    updated = await db.execute(
        "UPDATE secrets SET note = %s WHERE key_id = %s", ("first", "llm/openai")
    )
    row = await db.fetchone(
        "SELECT key_id, version, note FROM secrets WHERE key_id = %s", ("llm/openai",)
    )
    deleted = await db.execute("DELETE FROM secrets WHERE key_id = %s", ("llm/openai",))
    gone = await db.fetchone("SELECT 1 FROM secrets WHERE key_id = %s", ("llm/openai",))

    assert (inserted, updated, deleted) == (1, 1, 1)
    assert row == ("llm/openai", 1, "first")
    assert gone is None


async def test_rows_are_tuples_in_order(db: Database) -> None:
    for version in (2, 1, 3):
        await db.execute(
            "INSERT INTO secrets (key_id, version, value) VALUES (%s, %s, %s)",
            ("k", version, b"x"),
        )

    rows = await db.fetchall("SELECT version FROM secrets ORDER BY version DESC")

    assert rows == [(3,), (2,), (1,)]


async def test_bytes_round_trip_as_bytes(db: Database) -> None:
    value = bytes(range(256)) + b"\x00\x00"
    await db.execute(
        "INSERT INTO secrets (key_id, version, value) VALUES (%s, %s, %s)",
        ("k", 1, value),
    )

    row = await db.fetchone("SELECT value FROM secrets WHERE key_id = %s", ("k",))

    assert row is not None
    assert type(row[0]) is bytes
    assert row[0] == value


async def test_insert_returning_and_upsert(db: Database) -> None:
    upsert = (
        "INSERT INTO secrets (key_id, version, value, note) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (key_id, version) DO UPDATE SET note = excluded.note"
        " RETURNING note"
    )

    first = await db.fetchone(upsert, ("k", 1, b"x", "a"))
    second = await db.fetchone(upsert, ("k", 1, b"x", "b"))
    count = await db.fetchone("SELECT COUNT(*) FROM secrets")

    assert (first, second, count) == (("a",), ("b",), (1,))


async def test_percent_literals_with_and_without_params(db: Database) -> None:
    await db.execute(
        "INSERT INTO secrets (key_id, version, value) VALUES (%s, %s, %s)",
        ("llm/x", 1, b"x"),
    )

    with_params = await db.fetchall(
        "SELECT key_id FROM secrets WHERE key_id LIKE 'llm/%%' AND version = %s", (1,)
    )
    without_params = await db.fetchall(
        "SELECT key_id FROM secrets WHERE key_id LIKE 'llm/%'"
    )

    assert with_params == without_params == [("llm/x",)]


async def test_transaction_commits(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO secrets (key_id, version, value) VALUES (%s, %s, %s)",
            ("k", 1, b"x"),
        )
        await tx.execute("INSERT INTO labels VALUES (%s, %s)", ("k", "prod"))
        seen_inside = await tx.fetchall("SELECT label FROM labels")

    assert seen_inside == [("prod",)]
    assert await db.fetchall("SELECT key_id FROM secrets") == [("k",)]


async def test_transaction_rolls_back_on_exception(db: Database) -> None:
    with pytest.raises(LookupError):
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO secrets (key_id, version, value) VALUES (%s, %s, %s)",
                ("k", 1, b"x"),
            )
            raise LookupError("abandon")

    assert await db.fetchall("SELECT key_id FROM secrets") == []
    async with db.transaction() as tx:  # the connection is usable again
        await tx.execute("INSERT INTO labels VALUES (%s, %s)", ("k", "after"))
    assert await db.fetchall("SELECT label FROM labels") == [("after",)]


async def test_unique_violation_is_raised_and_rolls_back(db: Database) -> None:
    insert = "INSERT INTO secrets (key_id, version, value) VALUES (%s, %s, %s)"
    await db.execute(insert, ("k", 1, b"x"))

    with pytest.raises(UniqueViolation):
        await db.execute(insert, ("k", 1, b"y"))
    with pytest.raises(UniqueViolation):
        async with db.transaction() as tx:
            await tx.execute(insert, ("k", 2, b"x"))
            await tx.execute(insert, ("k", 1, b"y"))

    rows = await db.fetchall("SELECT key_id, version, value FROM secrets")
    assert rows == [("k", 1, b"x")]


async def test_concurrent_transactions_do_not_interleave(db: Database) -> None:
    await db.execute(
        "INSERT INTO secrets (key_id, version, value, note) VALUES (%s, %s, %s, %s)",
        ("counter", 1, b"x", "0"),
    )

    async def increment() -> None:
        async with db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT note FROM secrets WHERE key_id = %s FOR UPDATE"
                if db.dialect == "postgres"
                else "SELECT note FROM secrets WHERE key_id = %s",
                ("counter",),
            )
            assert row is not None
            await asyncio.sleep(0)
            await tx.execute(
                "UPDATE secrets SET note = %s WHERE key_id = %s",
                (str(int(row[0]) + 1), "counter"),
            )

    await asyncio.gather(*(increment() for _ in range(10)))

    assert await db.fetchone("SELECT note FROM secrets") == ("10",)


async def test_migrations_apply_once_in_order(
    database_url: str, migrations_dir: Path
) -> None:
    first = await open_database(database_url, migrations_dir)
    await first.close()
    (migrations_dir / "003_later.sql").write_text(
        "ALTER TABLE labels ADD COLUMN added INTEGER;"
    )

    second = await open_database(database_url, migrations_dir)
    try:
        recorded = await second.fetchall(
            "SELECT scope, version, name FROM schema_migrations ORDER BY version"
        )
        await second.execute("INSERT INTO labels VALUES (%s, %s, %s)", ("k", "l", 1))
    finally:
        await second.close()

    assert recorded == [
        ("vault", 1, "secrets"),
        ("vault", 2, "dialect"),
        ("vault", 3, "later"),
    ]


async def test_dialect_specific_migrations_apply_only_to_their_dialect(
    db: Database,
) -> None:
    mine, other = (
        ("only_postgres", "only_sqlite")
        if db.dialect == "postgres"
        else ("only_sqlite", "only_postgres")
    )

    await db.execute(f"INSERT INTO {mine} (id) VALUES (%s)", ("a",))
    with pytest.raises(Exception, match=other):
        await db.execute(f"INSERT INTO {other} (id) VALUES (%s)", ("a",))


async def test_failed_migration_leaves_nothing_behind(
    database_url: str, migrations_dir: Path
) -> None:
    (migrations_dir / "003_broken.sql").write_text(
        "CREATE TABLE half (id TEXT);\nTHIS IS NOT SQL;"
    )

    with pytest.raises(Exception, match="(?i)syntax"):
        await open_database(database_url, migrations_dir)
    (migrations_dir / "003_broken.sql").unlink()
    db = await open_database(database_url, migrations_dir)
    try:
        versions = await db.fetchall("SELECT version FROM schema_migrations")
        await db.execute("CREATE TABLE half (id TEXT)")  # it was rolled back
    finally:
        await db.close()

    assert sorted(versions) == [(1,), (2,)]


async def test_concurrent_starts_apply_each_migration_once(
    postgres_url: str, migrations_dir: Path
) -> None:
    # Without the advisory lock both replicas see no migration recorded and
    # the second CREATE TABLE (or the record insert) fails.
    replicas = await asyncio.gather(
        *(open_database(postgres_url, migrations_dir) for _ in range(4))
    )
    try:
        recorded = await replicas[0].fetchall(
            "SELECT version FROM schema_migrations ORDER BY version"
        )
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))

    assert recorded == [(1,), (2,)]


async def test_replicas_opening_one_sqlite_file_together_all_start(
    tmp_path: Path, migrations_dir: Path
) -> None:
    # Switching a new file to WAL answers "locked" at once rather than waiting,
    # and a migration another replica applied meanwhile must be skipped.
    for attempt in range(5):
        url = f"sqlite:///{tmp_path / f'shared-{attempt}.db'}"
        replicas = await asyncio.gather(
            *(open_database(url, migrations_dir) for _ in range(6))
        )
        try:
            recorded = await replicas[0].fetchall(
                "SELECT version FROM schema_migrations ORDER BY version"
            )
        finally:
            await asyncio.gather(*(replica.close() for replica in replicas))
        assert recorded == [(1,), (2,)]


async def test_blob_becomes_bytea_on_postgres(
    postgres_url: str, migrations_dir: Path
) -> None:
    db = await open_database(postgres_url, migrations_dir)
    try:
        row = await db.fetchone(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = %s AND column_name = %s",
            ("secrets", "value"),
        )
    finally:
        await db.close()

    assert row == ("bytea",)


async def test_sqlite_enforces_foreign_keys(sqlite_url: str) -> None:
    db = await open_database(sqlite_url)
    try:
        await db.execute("CREATE TABLE parent (id TEXT PRIMARY KEY)")
        await db.execute(
            "CREATE TABLE child (parent_id TEXT NOT NULL REFERENCES parent (id))"
        )
        with pytest.raises(Exception, match="FOREIGN KEY"):
            await db.execute("INSERT INTO child VALUES (%s)", ("missing",))
        journal = await db.fetchone("PRAGMA journal_mode")
    finally:
        await db.close()

    assert journal == ("wal",)


async def test_sqlite_in_memory_and_relative_urls() -> None:
    db = await open_database("sqlite://:memory:")
    try:
        await db.execute("CREATE TABLE t (v BLOB)")
        await db.execute("INSERT INTO t VALUES (%s)", (b"\x01",))
        rows = await db.fetchall("SELECT v FROM t")
    finally:
        await db.close()

    assert rows == [(b"\x01",)]
    assert sqlite_path("sqlite:///var/vault.db") == "var/vault.db"
    assert sqlite_path("sqlite:////tmp/vault.db") == "/tmp/vault.db"


def test_placeholders_convert_for_sqlite() -> None:
    sql = "SELECT %s, '100%%' WHERE a LIKE %s"

    assert to_sqlite_placeholders(sql) == "SELECT ?, '100%' WHERE a LIKE ?"


def test_duplicate_migration_versions_are_refused(migrations_dir: Path) -> None:
    (migrations_dir / "001_again.sql").write_text("SELECT 1;")

    with pytest.raises(ValueError, match="version 1"):
        load_migrations(migrations_dir, "sqlite")


async def test_unreachable_database_is_unavailable_without_secrets() -> None:
    url = "postgresql://empire:hunter2-secret@127.0.0.1:1/vault"

    with pytest.raises(Unavailable) as raised:
        await open_database(url, timeout_s=1.0)

    assert raised.value.reason == "DATABASE_UNAVAILABLE"
    assert "hunter2" not in str(raised.value)
    assert "127.0.0.1" not in str(raised.value)
    assert raised.value.__cause__ is None


async def _wait_until_works(call: Callable[[], object], attempts: int = 20) -> int:
    """How many attempts failed before `call` succeeded; fails after `attempts`."""
    for failed in range(attempts):
        try:
            await call()  # type: ignore[misc]
            return failed
        except Unavailable:
            await asyncio.sleep(0.25)
    pytest.fail("the database never came back")


async def test_cut_is_unavailable_and_restore_heals_same_database(
    postgres_url: str, migrations_dir: Path, fault_proxy: FaultProxyFactory
) -> None:
    proxy = await fault_proxy(*host_port(postgres_url))
    db = await open_database(proxy.url_for(postgres_url), migrations_dir, timeout_s=1.0)
    insert = "INSERT INTO secrets (key_id, version, value) VALUES (%s, %s, %s)"
    try:
        await db.execute(insert, ("before", 1, b"x"))

        proxy.cut()
        with pytest.raises(Unavailable) as plain:
            await db.fetchall("SELECT key_id FROM secrets")
        with pytest.raises(Unavailable) as in_transaction:
            async with db.transaction() as tx:
                await tx.execute(insert, ("during", 1, b"x"))
        # A longer outage, so a pool with a growing reconnection backoff would
        # still be waiting when the database returns.
        for _ in range(2):
            with pytest.raises(Unavailable):
                await db.fetchone("SELECT 1")

        proxy.restore()
        failures = await _wait_until_works(
            lambda: db.execute(insert, ("after", 1, b"x"))
        )
        rows = await db.fetchall("SELECT key_id FROM secrets ORDER BY key_id")
    finally:
        await db.close()

    assert plain.value.reason == in_transaction.value.reason == "DATABASE_UNAVAILABLE"
    assert failures == 0
    assert rows == [("after",), ("before",)]


async def test_stall_is_unavailable_instead_of_hanging(
    postgres_url: str, migrations_dir: Path, fault_proxy: FaultProxyFactory
) -> None:
    proxy = await fault_proxy(*host_port(postgres_url))
    db = await open_database(
        proxy.url_for(postgres_url),
        migrations_dir,
        timeout_s=1.0,
        statement_timeout_s=0.5,
    )
    insert = "INSERT INTO labels VALUES (%s, %s)"

    async def stall_mid_transaction() -> None:
        async with db.transaction() as tx:
            await tx.execute(insert, ("k", "first"))
            proxy.stall()
            await tx.execute(insert, ("k", "second"))

    try:
        # The guard turns a hang (psycopg's own cancellation waits out the
        # stall for seconds) into a failure; it is far above the 0.5 s timeout.
        with pytest.raises(Unavailable):
            await asyncio.wait_for(stall_mid_transaction(), HANG_GUARD_S)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(db.fetchone("SELECT 1"), HANG_GUARD_S)
        with pytest.raises(Unavailable):
            async with asyncio.timeout(HANG_GUARD_S), db.transaction() as tx:
                await tx.execute(insert, ("k", "third"))

        proxy.restore()
        failures = await _wait_until_works(lambda: db.fetchone("SELECT 1"))
        labels = await db.fetchall("SELECT label FROM labels")
    finally:
        await db.close()

    assert failures == 0
    assert labels == []


async def test_calls_after_a_healed_cut_succeed_at_once(
    postgres_url: str, fault_proxy: FaultProxyFactory
) -> None:
    proxy = await fault_proxy(*host_port(postgres_url))
    db = await open_database(proxy.url_for(postgres_url), timeout_s=1.0)
    try:
        # Fill the pool with several connections, which the cut then breaks
        # while they sit idle, unseen by anyone.
        await asyncio.gather(*(db.fetchone("SELECT pg_sleep(0.1)") for _ in range(6)))
        proxy.cut()
        proxy.restore()

        answers = [await db.fetchone("SELECT %s::int", (n,)) for n in range(6)]
    finally:
        await db.close()

    assert answers == [(n,) for n in range(6)]


async def test_deadlock_is_aborted_and_the_other_transaction_commits(
    postgres_url: str, migrations_dir: Path
) -> None:
    db = await open_database(postgres_url, migrations_dir)
    await db.execute("INSERT INTO labels VALUES ('a', '0'), ('b', '0')")
    both_locked_one = asyncio.Barrier(2)

    async def update(first: str, second: str) -> None:
        async with db.transaction() as tx:
            await tx.execute("SET LOCAL deadlock_timeout = '50ms'")
            await tx.execute(
                "UPDATE labels SET label = %s WHERE key_id = %s", (first, first)
            )
            await both_locked_one.wait()
            await tx.execute(
                "UPDATE labels SET label = %s WHERE key_id = %s", (first, second)
            )

    try:
        outcomes = await asyncio.gather(
            update("a", "b"), update("b", "a"), return_exceptions=True
        )
        labels = await db.fetchall("SELECT label FROM labels ORDER BY key_id")
    finally:
        await db.close()

    aborted = [o for o in outcomes if isinstance(o, Aborted)]
    assert len(aborted) == 1 and aborted[0].reason == "DATABASE_CONFLICT"
    assert outcomes.count(None) == 1
    assert labels in ([("a",), ("a",)], [("b",), ("b",)])


async def test_connections_the_server_closed_are_replaced_unseen(
    postgres_url: str, postgres_admin_url: str
) -> None:
    db = await open_database(postgres_url)
    try:
        await asyncio.gather(*(db.fetchone("SELECT pg_sleep(0.1)") for _ in range(4)))
        async with await psycopg.AsyncConnection.connect(
            postgres_admin_url, autocommit=True
        ) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s",
                (postgres_url.rsplit("/", 1)[1],),
            )
        await asyncio.sleep(0.1)  # let the termination notices arrive

        answers = [await db.fetchone("SELECT %s::int", (n,)) for n in range(4)]
    finally:
        await db.close()

    assert answers == [(n,) for n in range(4)]
