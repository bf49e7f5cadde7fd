"""One async database facade over PostgreSQL (psycopg 3 pool) and SQLite.

Services write portable SQL with `%s` placeholders and call the same methods on
either dialect; this module converts placeholders and types, applies each
service's ordered migrations once, and turns driver failures into the two
errors callers handle: `shared.errors.Unavailable` (reason DATABASE_UNAVAILABLE)
when the database cannot be reached, and `UniqueViolation` when a row clashes
with a unique constraint (plus `shared.errors.Aborted`, reason DATABASE_CONFLICT,
when PostgreSQL breaks a deadlock or a lock wait outlasts `lock_timeout`). Rows
come back as tuples, binary columns as `bytes`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import logging
import re
import select
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import psycopg
import psycopg_pool

from shared.errors import Aborted, Unavailable

logger = logging.getLogger(__name__)

Params = Sequence[Any] | None
Row = tuple[Any, ...]
Dialect = Literal["postgres", "sqlite"]
T = TypeVar("T")

UNAVAILABLE_REASON = "DATABASE_UNAVAILABLE"
CONFLICT_REASON = "DATABASE_CONFLICT"
DEFAULT_TIMEOUT_S = 3.0
DEFAULT_STATEMENT_TIMEOUT_S = 10.0
_INTERRUPT_ROUNDS = 20
_INTERRUPT_WAIT_S = 0.05

_MIGRATION_FILE = re.compile(r"^(\d+)_([A-Za-z0-9_\-]+?)(?:\.(postgres|sqlite))?\.sql$")
_PLACEHOLDER = re.compile(r"%[s%]")
_BLOB = re.compile(r"\bBLOB\b", re.IGNORECASE)
_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    scope TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, version)
)
"""
_RECORD_MIGRATION = (
    "INSERT INTO schema_migrations (scope, version, name, applied_at_ms)"
    " VALUES (%s, %s, %s, %s)"
)
_APPLIED_VERSIONS = "SELECT version FROM schema_migrations WHERE scope = %s"
_SQLITE_WAL_SWITCH_SECONDS = 5.0


class UniqueViolation(Exception):
    """An insert or update clashed with a unique or primary-key constraint.

    Not an `EmpireError`: the domain decides what a clash means (ALREADY_EXISTS,
    ABORTED, a retry with a new id).
    """

    def __init__(self, constraint: str | None = None) -> None:
        super().__init__(f"unique constraint violated: {constraint or 'unknown'}")
        self.constraint = constraint


class Executor(Protocol):
    """What both a `Database` and an open transaction offer."""

    async def execute(self, sql: str, params: Params = None) -> int: ...

    async def fetchone(self, sql: str, params: Params = None) -> Row | None: ...

    async def fetchall(self, sql: str, params: Params = None) -> list[Row]: ...


class Database(Executor, Protocol):
    """The facade a service's store uses; see `open_database`."""

    dialect: Dialect

    def transaction(self) -> AbstractAsyncContextManager[Executor]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


async def open_database(
    url: str,
    migrations_dir: str | Path | None = None,
    *,
    scope: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
    max_connections: int = 10,
) -> Database:
    """Open `url` and apply the migrations found in `migrations_dir`.

    `url` is `postgresql://...`, `sqlite:///relative/path.db`,
    `sqlite:////absolute/path.db` or `sqlite://:memory:`. Migrations are
    `NNN_name.sql` files (or `NNN_name.postgres.sql` / `NNN_name.sqlite.sql` for
    one dialect only), recorded in `schema_migrations` under `scope`, which
    defaults to the service directory's name (`vault` for
    `services/vault/migrations`). `timeout_s` bounds connecting and waiting for a
    pooled connection; `statement_timeout_s` bounds one statement on PostgreSQL,
    so a stalled network fails instead of hanging.

    Raises `Unavailable` (DATABASE_UNAVAILABLE) when the database is unreachable.
    """
    database: PostgresDatabase | SqliteDatabase
    if url.startswith(("postgresql://", "postgres://")):
        database = await PostgresDatabase.connect(
            url, timeout_s, statement_timeout_s, max_connections
        )
    elif url.startswith("sqlite://"):
        database = await SqliteDatabase.connect(sqlite_path(url))
    else:
        raise ValueError("database URL must start with postgresql:// or sqlite://")

    if migrations_dir is not None:
        directory = Path(migrations_dir)
        migrations = load_migrations(directory, database.dialect)
        try:
            await database.migrate(scope or migration_scope(directory), migrations)
        except BaseException:
            await database.close()
            raise
    return database


def sqlite_path(url: str) -> str:
    """The file path in a `sqlite://` URL (SQLAlchemy convention)."""
    rest = url.removeprefix("sqlite://")
    if rest in (":memory:", "/:memory:", ""):
        return ":memory:"
    return rest.removeprefix("/")


def migration_scope(directory: Path) -> str:
    """The scope migrations are recorded under: the service, not `migrations`."""
    resolved = directory.resolve()
    return resolved.parent.name if resolved.name == "migrations" else resolved.name


def load_migrations(directory: Path, dialect: Dialect) -> list[Migration]:
    """The migrations in `directory` that apply to `dialect`, in version order."""
    by_version: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_FILE.match(path.name)
        if not match or match.group(3) not in (None, dialect):
            continue
        version = int(match.group(1))
        if version in by_version:
            raise ValueError(f"two migrations share version {version} in {directory}")
        sql = path.read_text(encoding="utf-8")
        if dialect == "postgres":
            sql = _BLOB.sub("BYTEA", sql)
        by_version[version] = Migration(version, match.group(2), sql)
    return [by_version[version] for version in sorted(by_version)]


@functools.lru_cache(maxsize=1024)
def to_sqlite_placeholders(sql: str) -> str:
    """`%s` becomes `?` and `%%` becomes `%`, as psycopg reads them."""
    return _PLACEHOLDER.sub(lambda m: "?" if m.group() == "%s" else "%", sql)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _unavailable() -> Unavailable:
    return Unavailable("database unavailable", reason=UNAVAILABLE_REASON)


_last_outage_log = 0.0


def _log_outage(dialect: str, exc: BaseException) -> None:
    # One line every few seconds is enough during an outage; the exception class
    # says what failed without echoing a connection string.
    global _last_outage_log
    now = time.monotonic()
    if now - _last_outage_log >= 5.0:
        _last_outage_log = now
        logger.warning("%s database unavailable: %s", dialect, type(exc).__name__)


# PostgreSQL ------------------------------------------------------------------

_PG_CONFLICTS = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    # A wait past `lock_timeout`: another transaction holds the lock too long,
    # which says nothing about whether the database is reachable.
    psycopg.errors.LockNotAvailable,
)
_PG_UNAVAILABLE = (
    psycopg.OperationalError,
    # The server ended the session, idle in a transaction for too long.
    psycopg.errors.IdleInTransactionSessionTimeout,
    psycopg.InterfaceError,
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
    OSError,
    TimeoutError,
)


@contextmanager
def _postgres_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise UniqueViolation(exc.diag.constraint_name) from None
    except _PG_CONFLICTS:
        # A deadlock, serialization failure or lock timeout: the database is
        # up, and the caller may retry the whole transaction.
        raise Aborted(
            "the transaction lost a conflict; retry it", reason=CONFLICT_REASON
        ) from None
    except _PG_UNAVAILABLE as exc:
        _log_outage("postgres", exc)
        raise _unavailable() from None


class PostgresDatabase:
    """PostgreSQL through a checked, self-healing psycopg connection pool."""

    dialect: Dialect = "postgres"

    def __init__(
        self, url: str, timeout_s: float, statement_timeout_s: float, max_size: int
    ) -> None:
        self._timeout_s = timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._abandoned: set[asyncio.Task[Any]] = set()
        self._sweep: asyncio.Task[None] | None = None
        self._pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            # Give up background reconnection quickly: the next request then
            # starts a fresh attempt at once instead of waiting out a long
            # exponential backoff after the database is back.
            reconnect_timeout=timeout_s / 2,
            check=self._check_connection,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(2, int(timeout_s)),
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            },
        )

    @classmethod
    async def connect(
        cls, url: str, timeout_s: float, statement_timeout_s: float, max_size: int
    ) -> PostgresDatabase:
        database = cls(url, timeout_s, statement_timeout_s, max_size)
        with _postgres_errors():
            try:
                await database._pool.open(wait=True, timeout=timeout_s)
            except BaseException:
                await database._pool.close()
                raise
        return database

    async def execute(self, sql: str, params: Params = None) -> int:
        return await self._within(self._run(_pg_execute, sql, params))

    async def fetchone(self, sql: str, params: Params = None) -> Row | None:
        return await self._within(self._run(_pg_fetchone, sql, params))

    async def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        return await self._within(self._run(_pg_fetchall, sql, params))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        """A transaction on one connection, committed when the block exits.

        An exception rolls it back. On PostgreSQL a failed statement aborts the
        whole transaction, so let its exception leave the block.
        """
        with self._errors():
            conn = await self._within(
                self._pool.getconn(), late_result=self._pool.putconn
            )
        transaction = _PostgresTransaction(self, conn)
        try:
            await transaction.execute("BEGIN")
            try:
                yield transaction
            except BaseException:
                # The original error matters more than a failed rollback; the
                # pool discards a connection left in a bad state.
                with suppress(Exception):
                    await transaction.execute("ROLLBACK")
                raise
            await transaction.execute("COMMIT")
        finally:
            await self._pool.putconn(conn)

    async def migrate(self, scope: str, migrations: list[Migration]) -> None:
        with _postgres_errors():
            async with self._pool.connection() as conn:
                # A session lock, so two replicas starting together apply each
                # migration once: the second waits, then sees it recorded.
                lock_key = _advisory_lock_key(scope)
                await conn.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
                try:
                    await _pg_apply_migrations(conn, scope, migrations)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))

    async def close(self) -> None:
        background = [*self._abandoned, *([self._sweep] if self._sweep else [])]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self._pool.close(timeout=self._statement_timeout_s)

    async def _check_connection(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # An idle connection has nothing to say: if its socket is readable, the
        # server or the network closed it (or sent a notice). Only then does
        # the check pay a round trip, so the usual acquisition costs none.
        if not _has_pending_input(conn):
            return
        try:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)
        except Exception:
            self._sweep_idle_connections()
            raise

    def _sweep_idle_connections(self) -> None:
        # One broken connection means its idle neighbours are likely broken too
        # (the database restarted, the network was cut). Checking them all at
        # once spares the next callers from drawing them one by one, each
        # failed draw costing a backoff, until their timeout.
        if self._sweep is None or self._sweep.done():
            self._sweep = asyncio.create_task(self._pool.check())
            self._sweep.add_done_callback(_retrieve_exception)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            with _postgres_errors():
                yield
        except Unavailable:
            self._sweep_idle_connections()
            raise

    async def _run(
        self,
        operation: Callable[[psycopg.AsyncCursor[Any]], Awaitable[T]],
        sql: str,
        params: Params,
    ) -> T:
        with self._errors():
            async with self._pool.connection() as conn, conn.cursor() as cursor:
                await cursor.execute(sql, params or None)
                return await operation(cursor)

    async def _within(
        self,
        work: Awaitable[T],
        late_result: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """`work`'s result, or `Unavailable` once the statement timeout passes,
        so a stalled network fails instead of hanging. `late_result` takes a
        result that arrives after the caller gave up (a pooled connection)."""
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=self._statement_timeout_s)
        except asyncio.CancelledError:
            await self._interrupt(task, late_result)
            raise
        if done:
            return task.result()

        await self._interrupt(task, late_result)
        _log_outage("postgres", TimeoutError())
        raise _unavailable()

    async def _interrupt(
        self,
        task: asyncio.Task[T],
        late_result: Callable[[T], Awaitable[None]] | None,
    ) -> None:
        # psycopg answers a first cancellation by asking the server to cancel
        # the query, which hangs as long as the network does, and a second one
        # by closing the connection: so cancel until the task ends.
        try:
            for _ in range(_INTERRUPT_ROUNDS):
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=_INTERRUPT_WAIT_S)
                if done:
                    break
        finally:
            if not task.done():
                self._abandoned.add(task)
                task.add_done_callback(self._abandoned.discard)
                task.add_done_callback(_retrieve_exception)
        if not task.done() or task.cancelled() or task.exception() is not None:
            return
        if late_result is not None:
            await late_result(task.result())


class _PostgresTransaction:
    def __init__(
        self, database: PostgresDatabase, conn: psycopg.AsyncConnection[Any]
    ) -> None:
        self._database = database
        self._conn = conn

    async def execute(self, sql: str, params: Params = None) -> int:
        return await self._database._within(self._run(_pg_execute, sql, params))

    async def fetchone(self, sql: str, params: Params = None) -> Row | None:
        return await self._database._within(self._run(_pg_fetchone, sql, params))

    async def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        return await self._database._within(self._run(_pg_fetchall, sql, params))

    async def _run(
        self,
        operation: Callable[[psycopg.AsyncCursor[Any]], Awaitable[T]],
        sql: str,
        params: Params,
    ) -> T:
        with self._database._errors():
            async with self._conn.cursor() as cursor:
                await cursor.execute(sql, params or None)
                return await operation(cursor)


def _has_pending_input(conn: psycopg.AsyncConnection[Any]) -> bool:
    if conn.closed or conn.broken:
        return True
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # Retrieved, so asyncio does not log "exception was never retrieved": the
    # caller already had its answer.
    if not task.cancelled():
        task.exception()


async def _pg_execute(cursor: psycopg.AsyncCursor[Any]) -> int:
    return cursor.rowcount


async def _pg_fetchone(cursor: psycopg.AsyncCursor[Any]) -> Row | None:
    row = await cursor.fetchone()
    return None if row is None else tuple(row)


async def _pg_fetchall(cursor: psycopg.AsyncCursor[Any]) -> list[Row]:
    return [tuple(row) for row in await cursor.fetchall()]


def _advisory_lock_key(scope: str) -> int:
    digest = hashlib.sha256(f"empire.schema_migrations.{scope}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _pg_apply_migrations(
    conn: psycopg.AsyncConnection[Any], scope: str, migrations: list[Migration]
) -> None:
    await conn.execute(_SCHEMA_MIGRATIONS)
    cursor = await conn.execute(_APPLIED_VERSIONS, (scope,))
    applied = {row[0] for row in await cursor.fetchall()}
    for migration in migrations:
        if migration.version in applied:
            continue
        async with conn.transaction():
            await conn.execute(migration.sql.encode())
            await conn.execute(
                _RECORD_MIGRATION,
                (scope, migration.version, migration.name, _now_ms()),
            )
        logger.info(
            "applied migration %s/%03d_%s", scope, migration.version, migration.name
        )


# SQLite ----------------------------------------------------------------------

_SQLITE_UNAVAILABLE_CODES = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_FULL,
}
_SQLITE_UNIQUE_CODES = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}

# Which SQLite database, if any, the current task holds a transaction on: a
# plain call on it from inside the block would wait for the block forever.
_sqlite_transaction_owner: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "sqlite_transaction_owner", default=None
)


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if getattr(exc, "sqlite_errorname", None) in _SQLITE_UNIQUE_CODES:
            raise UniqueViolation(_sqlite_constraint(exc)) from None
        raise
    except sqlite3.OperationalError as exc:
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_UNAVAILABLE_CODES:
            _log_outage("sqlite", exc)
            raise _unavailable() from None
        raise


def _sqlite_constraint(exc: sqlite3.Error) -> str | None:
    # "UNIQUE constraint failed: secrets.key_id, secrets.version"
    _, _, columns = str(exc).partition(": ")
    return columns or None


class SqliteDatabase:
    """SQLite on one dedicated thread with one connection; one writer at a time."""

    dialect: Dialect = "sqlite"

    def __init__(self, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self._executor = executor
        self._conn = conn
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def connect(cls, path: str) -> SqliteDatabase:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        loop = asyncio.get_running_loop()
        try:
            with _sqlite_errors():
                conn = await loop.run_in_executor(executor, _sqlite_connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn)

    async def execute(self, sql: str, params: Params = None) -> int:
        return await self._locked(_sqlite_execute, sql, params)

    async def fetchone(self, sql: str, params: Params = None) -> Row | None:
        rows = await self._locked(_sqlite_fetchall, sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        return await self._locked(_sqlite_fetchall, sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        """A serialized transaction, committed when the block exits.

        An exception rolls it back. Inside the block, use the yielded object,
        not the database itself.
        """
        self._refuse_reentry()
        async with self._lock:
            token = _sqlite_transaction_owner.set(id(self))
            try:
                await self._call(_sqlite_execute, "BEGIN IMMEDIATE", None)
                try:
                    yield _SqliteTransaction(self)
                except BaseException:
                    await self._call(_sqlite_execute, "ROLLBACK", None)
                    raise
                await self._call(_sqlite_execute, "COMMIT", None)
            finally:
                _sqlite_transaction_owner.reset(token)

    async def migrate(self, scope: str, migrations: list[Migration]) -> None:
        async with self._lock:
            await self._call(_sqlite_apply_migrations, scope, migrations)

    async def close(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await self._call(_sqlite_close)
        self._executor.shutdown(wait=False)

    async def _locked(self, operation: Callable[..., T], sql: str, params: Params) -> T:
        self._refuse_reentry()
        async with self._lock:
            return await self._call(operation, to_sqlite_placeholders(sql), params)

    async def _call(self, operation: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        with _sqlite_errors():
            return await loop.run_in_executor(
                self._executor, operation, self._conn, *args
            )

    def _refuse_reentry(self) -> None:
        if _sqlite_transaction_owner.get() == id(self):
            raise RuntimeError("inside db.transaction(), use the transaction object")


class _SqliteTransaction:
    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def execute(self, sql: str, params: Params = None) -> int:
        return await self._call(_sqlite_execute, sql, params)

    async def fetchone(self, sql: str, params: Params = None) -> Row | None:
        rows = await self._call(_sqlite_fetchall, sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        return await self._call(_sqlite_fetchall, sql, params)

    async def _call(self, operation: Callable[..., T], sql: str, params: Params) -> T:
        # The database lock is already held by the enclosing transaction.
        return await self._database._call(
            operation, to_sqlite_placeholders(sql), params
        )


def _sqlite_connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Created on the executor's one thread and only ever used there.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    if path != ":memory:":
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _enable_wal(conn: sqlite3.Connection) -> None:
    # Switching the journal mode takes an exclusive lock and, unlike ordinary
    # statements, answers "database is locked" at once instead of waiting on
    # busy_timeout; replicas opening one file together must retry it.
    deadline = time.monotonic() + _SQLITE_WAL_SWITCH_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in {
                sqlite3.SQLITE_BUSY,
                sqlite3.SQLITE_LOCKED,
            }
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_execute(conn: sqlite3.Connection, sql: str, params: Params) -> int:
    return conn.execute(sql, tuple(params or ())).rowcount


def _sqlite_fetchall(conn: sqlite3.Connection, sql: str, params: Params) -> list[Row]:
    # fetchall even for one row, so a RETURNING statement always completes.
    return [tuple(row) for row in conn.execute(sql, tuple(params or ())).fetchall()]


def _sqlite_close(conn: sqlite3.Connection) -> None:
    conn.close()


def _sqlite_apply_migrations(
    conn: sqlite3.Connection, scope: str, migrations: list[Migration]
) -> None:
    conn.execute(_SCHEMA_MIGRATIONS)
    applied = {
        row[0]
        for row in conn.execute(to_sqlite_placeholders(_APPLIED_VERSIONS), (scope,))
    }
    for migration in migrations:
        if migration.version in applied:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have applied it since `applied` was read.
            if conn.execute(
                to_sqlite_placeholders(_APPLIED_VERSIONS) + " AND version = ?",
                (scope, migration.version),
            ).fetchone():
                conn.execute("ROLLBACK")
                continue
            for statement in split_sqlite_script(migration.sql):
                conn.execute(statement)
            conn.execute(
                to_sqlite_placeholders(_RECORD_MIGRATION),
                (scope, migration.version, migration.name, _now_ms()),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        logger.info(
            "applied migration %s/%03d_%s", scope, migration.version, migration.name
        )


def split_sqlite_script(script: str) -> list[str]:
    """The complete statements in `script` (executescript would commit early)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                statements.append(pending)
            pending = ""
    return statements
