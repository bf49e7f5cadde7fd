"""The auth store: one interface over PostgreSQL and SQLite (through `shared.db`).

Rows go in and out as the small records below; the domain modules decide what
they mean. `AuthStore.transaction()` yields the same queries bound to one
transaction.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.auth.secrets_box import LABEL_SEPARATOR
from shared.db import Database, Executor, open_database

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class KeyRow:
    key_id: str
    algorithm: str
    state: str
    public_jwk: dict[str, Any]
    sealed_private_key: bytes | None
    created_ms: int
    activated_ms: int | None
    deactivated_ms: int | None
    retire_ms: int | None


@dataclass(frozen=True)
class IssuedTokenRow:
    token_id: str
    subject: str
    key_id: str
    family_id: str | None
    api_key_id: str | None
    issued_ms: int
    expires_ms: int


@dataclass(frozen=True)
class FamilyRow:
    family_id: str
    subject: str
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    audience: str
    claims: dict[str, Any]
    created_ms: int
    expires_ms: int
    revoked_ms: int | None = None


@dataclass(frozen=True)
class RefreshTokenRow:
    token_hash: str
    family_id: str
    created_ms: int
    expires_ms: int
    used_ms: int | None = None


@dataclass(frozen=True)
class ApiKeyRow:
    api_key_id: str
    secret_hash: str
    display_name: str
    subject: str
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    creator: str
    created_ms: int
    expires_ms: int | None = None
    revoked_ms: int | None = None


_KEY_COLUMNS = (
    "key_id, algorithm, state, public_jwk, sealed_private_key, created_ms,"
    " activated_ms, deactivated_ms, retire_ms"
)
# Where keyed hashes of bearer secrets are stored.
_HASH_COLUMNS = (("api_keys", "secret_hash"), ("refresh_tokens", "token_hash"))

_API_KEY_COLUMNS = (
    "api_key_id, secret_hash, display_name, subject, scopes, roles, creator,"
    " created_ms, expires_ms, revoked_ms"
)
_FAMILY_COLUMNS = (
    "family_id, subject, scopes, roles, audience, claims, created_ms, expires_ms,"
    " revoked_ms"
)


class AuthQueries:
    """Every query the service runs, on a database or inside a transaction."""

    def __init__(self, executor: Executor) -> None:
        self._db = executor

    # Signing keys ----------------------------------------------------------

    async def fetch_keyring(self) -> tuple[int, list[KeyRow]]:
        version_row = await self._db.fetchone(
            "SELECT version FROM keyring_version WHERE id = 1"
        )
        rows = await self._db.fetchall(f"SELECT {_KEY_COLUMNS} FROM signing_keys")
        version = int(version_row[0]) if version_row else 0
        return version, [_key_row(row) for row in rows]

    async def claim_keyring_version(self, expected: int) -> bool:
        """Compare-and-set on the keyring's version; False if another writer won."""
        changed = await self._db.execute(
            "UPDATE keyring_version SET version = version + 1"
            " WHERE id = 1 AND version = %s",
            (expected,),
        )
        return changed == 1

    async def save_key(self, key: KeyRow) -> None:
        await self._db.execute(
            f"INSERT INTO signing_keys ({_KEY_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (key_id) DO UPDATE SET state = excluded.state,"
            " sealed_private_key = excluded.sealed_private_key,"
            " activated_ms = excluded.activated_ms,"
            " deactivated_ms = excluded.deactivated_ms,"
            " retire_ms = excluded.retire_ms",
            (
                key.key_id,
                key.algorithm,
                key.state,
                json.dumps(key.public_jwk, sort_keys=True),
                key.sealed_private_key,
                key.created_ms,
                key.activated_ms,
                key.deactivated_ms,
                key.retire_ms,
            ),
        )

    # Issued and revoked access tokens --------------------------------------

    async def record_issued(self, token: IssuedTokenRow) -> None:
        await self._db.execute(
            "INSERT INTO issued_tokens (token_id, subject, key_id, family_id,"
            " api_key_id, issued_ms, expires_ms) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                token.token_id,
                token.subject,
                token.key_id,
                token.family_id,
                token.api_key_id,
                token.issued_ms,
                token.expires_ms,
            ),
        )

    async def issued_expiry(self, token_id: str) -> int | None:
        row = await self._db.fetchone(
            "SELECT expires_ms FROM issued_tokens WHERE token_id = %s", (token_id,)
        )
        return None if row is None else int(row[0])

    async def live_tokens_of_family(
        self, family_id: str, expiring_after_ms: int
    ) -> list[tuple[str, int]]:
        rows = await self._db.fetchall(
            "SELECT token_id, expires_ms FROM issued_tokens"
            " WHERE family_id = %s AND expires_ms > %s",
            (family_id, expiring_after_ms),
        )
        return [(str(row[0]), int(row[1])) for row in rows]

    async def live_tokens_of_api_key(
        self, api_key_id: str, expiring_after_ms: int
    ) -> list[tuple[str, int]]:
        rows = await self._db.fetchall(
            "SELECT token_id, expires_ms FROM issued_tokens"
            " WHERE api_key_id = %s AND expires_ms > %s",
            (api_key_id, expiring_after_ms),
        )
        return [(str(row[0]), int(row[1])) for row in rows]

    async def revoke_tokens(self, tokens: list[tuple[str, int]], now_ms: int) -> None:
        for token_id, expires_ms in tokens:
            await self._db.execute(
                "INSERT INTO revoked_tokens (token_id, expires_ms, revoked_ms)"
                " VALUES (%s, %s, %s) ON CONFLICT (token_id) DO NOTHING",
                (token_id, expires_ms, now_ms),
            )

    async def revocations_since(self, since_ms: int) -> list[tuple[str, int, int]]:
        rows = await self._db.fetchall(
            "SELECT token_id, expires_ms, revoked_ms FROM revoked_tokens"
            " WHERE revoked_ms >= %s",
            (since_ms,),
        )
        return [(str(row[0]), int(row[1]), int(row[2])) for row in rows]

    # Refresh families ------------------------------------------------------

    async def create_family(self, family: FamilyRow) -> None:
        await self._db.execute(
            f"INSERT INTO refresh_families ({_FAMILY_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                family.family_id,
                family.subject,
                " ".join(family.scopes),
                " ".join(family.roles),
                family.audience,
                json.dumps(family.claims),
                family.created_ms,
                family.expires_ms,
                family.revoked_ms,
            ),
        )

    async def get_family(self, family_id: str) -> FamilyRow | None:
        row = await self._db.fetchone(
            f"SELECT {_FAMILY_COLUMNS} FROM refresh_families WHERE family_id = %s",
            (family_id,),
        )
        return None if row is None else _family_row(row)

    async def lock_family(self, family_id: str) -> None:
        """Hold the family's row until the transaction ends (a portable
        `SELECT ... FOR UPDATE`): its revocation waits for us, or we see it."""
        await self._db.execute(
            "UPDATE refresh_families SET revoked_ms = revoked_ms WHERE family_id = %s",
            (family_id,),
        )

    async def revoke_family(self, family_id: str, now_ms: int) -> None:
        await self._db.execute(
            "UPDATE refresh_families SET revoked_ms = %s"
            " WHERE family_id = %s AND revoked_ms IS NULL",
            (now_ms, family_id),
        )

    async def add_refresh_token(self, token: RefreshTokenRow) -> None:
        await self._db.execute(
            "INSERT INTO refresh_tokens (token_hash, family_id, created_ms,"
            " expires_ms, used_ms) VALUES (%s, %s, %s, %s, %s)",
            (
                token.token_hash,
                token.family_id,
                token.created_ms,
                token.expires_ms,
                token.used_ms,
            ),
        )

    async def get_refresh_token(self, token_hash: str) -> RefreshTokenRow | None:
        row = await self._db.fetchone(
            "SELECT token_hash, family_id, created_ms, expires_ms, used_ms"
            " FROM refresh_tokens WHERE token_hash = %s",
            (token_hash,),
        )
        if row is None:
            return None
        return RefreshTokenRow(
            str(row[0]), str(row[1]), int(row[2]), int(row[3]), _opt_int(row[4])
        )

    async def use_refresh_token(self, token_hash: str, now_ms: int) -> bool:
        """Mark an unused refresh token used; False if it was used already."""
        changed = await self._db.execute(
            "UPDATE refresh_tokens SET used_ms = %s"
            " WHERE token_hash = %s AND used_ms IS NULL",
            (now_ms, token_hash),
        )
        return changed == 1

    # API keys ---------------------------------------------------------------

    async def create_api_key(self, key: ApiKeyRow) -> None:
        await self._db.execute(
            f"INSERT INTO api_keys ({_API_KEY_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                key.api_key_id,
                key.secret_hash,
                key.display_name,
                key.subject,
                " ".join(key.scopes),
                " ".join(key.roles),
                key.creator,
                key.created_ms,
                key.expires_ms,
                key.revoked_ms,
            ),
        )

    async def get_api_key(self, api_key_id: str) -> ApiKeyRow | None:
        row = await self._db.fetchone(
            f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE api_key_id = %s",
            (api_key_id,),
        )
        return None if row is None else _api_key_row(row)

    async def list_api_keys(
        self,
        limit: int,
        before: tuple[int, str] | None,
        show_inactive: bool,
        now_ms: int,
    ) -> list[ApiKeyRow]:
        """Newest first, starting strictly after the cursor `before`."""
        conditions, params = [], []
        if before is not None:
            conditions.append(
                "(created_ms < %s OR (created_ms = %s AND api_key_id < %s))"
            )
            params += [before[0], before[0], before[1]]
        if not show_inactive:
            conditions.append(
                "revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > %s)"
            )
            params.append(now_ms)
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        rows = await self._db.fetchall(
            f"SELECT {_API_KEY_COLUMNS} FROM api_keys{where}"
            " ORDER BY created_ms DESC, api_key_id DESC LIMIT %s",
            (*params, limit),
        )
        return [_api_key_row(row) for row in rows]

    async def hold_unrevoked_api_key(self, api_key_id: str) -> bool:
        """Lock the key's row until the transaction ends, if it is not revoked.

        An exchange holds it while it records its token, so a revocation
        either waits and then lists that token, or is seen here first.
        """
        changed = await self._db.execute(
            "UPDATE api_keys SET revoked_ms = revoked_ms"
            " WHERE api_key_id = %s AND revoked_ms IS NULL",
            (api_key_id,),
        )
        return changed == 1

    async def revoke_api_key(self, api_key_id: str, now_ms: int) -> None:
        await self._db.execute(
            "UPDATE api_keys SET revoked_ms = %s"
            " WHERE api_key_id = %s AND revoked_ms IS NULL",
            (now_ms, api_key_id),
        )

    async def count_api_keys(self) -> int:
        row = await self._db.fetchone("SELECT COUNT(*) FROM api_keys")
        return int(row[0]) if row else 0

    # Master-key rotation ----------------------------------------------------

    async def rehash_api_key(self, api_key_id: str, old: str, new: str) -> None:
        """Replace the stored hash, unless another replica already did."""
        await self._db.execute(
            "UPDATE api_keys SET secret_hash = %s"
            " WHERE api_key_id = %s AND secret_hash = %s",
            (new, api_key_id, old),
        )

    async def reseal_signing_key(self, key_id: str, old: bytes, new: bytes) -> bool:
        """Replace a sealed private key, unless it changed meanwhile."""
        changed = await self._db.execute(
            "UPDATE signing_keys SET sealed_private_key = %s"
            " WHERE key_id = %s AND sealed_private_key = %s",
            (new, key_id, old),
        )
        return changed == 1

    async def label_unlabelled_hashes(self, label: str) -> int:
        """Prefix `label` to hashes stored before hashes carried one.

        Only correct while no accepted key exists: then every hash that still
        works was made by the current key.
        """
        prefix = label + LABEL_SEPARATOR
        changed = 0
        for table, column in _HASH_COLUMNS:
            changed += await self._db.execute(
                f"UPDATE {table} SET {column} = %s || {column}"
                f" WHERE {column} NOT LIKE %s",
                (prefix, f"%{LABEL_SEPARATOR}%"),
            )
        return changed

    async def count_hashes_not_under(self, label: str, now_ms: int) -> dict[str, int]:
        """Live API keys and refresh tokens whose hash another key made."""
        pattern = label + LABEL_SEPARATOR + "%"
        counts = {}
        for table, column in _HASH_COLUMNS:
            # Used refresh tokens and revoked keys are never presented again.
            unused = "used_ms" if table == "refresh_tokens" else "revoked_ms"
            row = await self._db.fetchone(
                f"SELECT COUNT(*) FROM {table} WHERE {column} NOT LIKE %s"
                f" AND {unused} IS NULL AND (expires_ms IS NULL OR expires_ms > %s)",
                (pattern, now_ms),
            )
            counts[table] = int(row[0]) if row else 0
        return counts

    # Housekeeping -----------------------------------------------------------

    async def prune_expired(self, before_ms: int) -> int:
        """Forget tokens, revocations and families that ended before `before_ms`."""
        removed = 0
        for table in ("issued_tokens", "revoked_tokens", "refresh_tokens"):
            removed += await self._db.execute(
                f"DELETE FROM {table} WHERE expires_ms < %s", (before_ms,)
            )
        removed += await self._db.execute(
            "DELETE FROM refresh_families WHERE expires_ms < %s", (before_ms,)
        )
        return removed


class AuthStore(AuthQueries):
    """The store over an open database; `transaction()` binds queries to one."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.database = database

    @classmethod
    async def open(cls, url: str, timeout_seconds: float = 3.0) -> AuthStore:
        """Open and migrate; a statement waits at most `timeout_seconds`."""
        database = await open_database(
            url,
            MIGRATIONS_DIR,
            scope="auth",
            timeout_s=timeout_seconds,
            statement_timeout_s=timeout_seconds,
        )
        return cls(database)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AuthQueries]:
        async with self.database.transaction() as tx:
            yield AuthQueries(tx)

    async def close(self) -> None:
        await self.database.close()


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _words(value: Any) -> tuple[str, ...]:
    return tuple(str(value).split())


def _key_row(row: tuple[Any, ...]) -> KeyRow:
    sealed = row[4]
    return KeyRow(
        key_id=str(row[0]),
        algorithm=str(row[1]),
        state=str(row[2]),
        public_jwk=json.loads(row[3]),
        sealed_private_key=None if sealed is None else bytes(sealed),
        created_ms=int(row[5]),
        activated_ms=_opt_int(row[6]),
        deactivated_ms=_opt_int(row[7]),
        retire_ms=_opt_int(row[8]),
    )


def _api_key_row(row: tuple[Any, ...]) -> ApiKeyRow:
    return ApiKeyRow(
        api_key_id=str(row[0]),
        secret_hash=str(row[1]),
        display_name=str(row[2]),
        subject=str(row[3]),
        scopes=_words(row[4]),
        roles=_words(row[5]),
        creator=str(row[6]),
        created_ms=int(row[7]),
        expires_ms=_opt_int(row[8]),
        revoked_ms=_opt_int(row[9]),
    )


def _family_row(row: tuple[Any, ...]) -> FamilyRow:
    return FamilyRow(
        family_id=str(row[0]),
        subject=str(row[1]),
        scopes=_words(row[2]),
        roles=_words(row[3]),
        audience=str(row[4]),
        claims=json.loads(row[5]),
        created_ms=int(row[6]),
        expires_ms=int(row[7]),
        revoked_ms=_opt_int(row[8]),
    )
