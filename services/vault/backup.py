"""Snapshots: every vault table, compressed, then sealed with a backup key.

The backup key is derived from the master key, and the wrapped keyring travels
inside the snapshot, so a vault started with the same master key can restore
it. The AES-GCM tag covers the whole snapshot; a restore also checks the
structure, the keyring and the audit chain before it writes anything.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag

from services.vault.audit import GENESIS_HASH, chain_hash
from services.vault.envelope import open_with, seal_with
from services.vault.errors import MasterKeyMismatch
from services.vault.keyring import unwrap_keyring
from services.vault.records import AuditRecord
from services.vault.store import BACKUP_TABLES
from shared.db import Row
from shared.errors import InvalidArgument

MAGIC = b"EMPIRE-VAULT-BACKUP-1\n"
FORMAT = 1
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Snapshot:
    tables: dict[str, list[list[Any]]]

    @property
    def counts(self) -> tuple[int, int, int]:
        return (
            len(self.tables["vault_secrets"]),
            len(self.tables["vault_versions"]),
            len(self.tables["vault_audit_events"]),
        )


def seal_snapshot(backup_key: bytes, tables: dict[str, list[Row]]) -> bytes:
    document = {
        "format": FORMAT,
        "tables": {
            name: [list(map(_encode, row)) for row in rows]
            for name, rows in tables.items()
        },
    }
    payload = zlib.compress(json.dumps(document, separators=(",", ":")).encode())
    return MAGIC + seal_with(backup_key, payload, MAGIC)


def chunks(blob: bytes) -> Iterator[bytes]:
    for start in range(0, len(blob), CHUNK_BYTES):
        yield blob[start : start + CHUNK_BYTES]


def open_snapshot(
    backup_key: bytes, root_key: bytes, audit_key: bytes, blob: bytes
) -> Snapshot:
    """Decrypts and checks a snapshot; raises `InvalidArgument` on `data` if bad."""
    if not blob.startswith(MAGIC):
        raise _invalid("is not a vault snapshot", "BACKUP_FORMAT_UNKNOWN")
    try:
        payload = zlib.decompress(open_with(backup_key, blob[len(MAGIC) :], MAGIC))
        document = json.loads(payload)
    except InvalidTag:
        raise _invalid(
            "failed its integrity check, or was made with another master key",
            "BACKUP_INTEGRITY_FAILURE",
        ) from None
    except (zlib.error, ValueError):
        raise _invalid("is not a readable snapshot", "BACKUP_FORMAT_UNKNOWN") from None
    snapshot = _structured(document)
    _check_keyring(root_key, snapshot)
    _check_chain(audit_key, snapshot)
    return snapshot


def _structured(document: Any) -> Snapshot:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _invalid("has an unknown format version", "BACKUP_FORMAT_UNKNOWN")
    tables = document.get("tables")
    if not isinstance(tables, dict) or set(tables) != set(BACKUP_TABLES):
        raise _invalid("lacks vault tables", "BACKUP_FORMAT_UNKNOWN")
    decoded: dict[str, list[list[Any]]] = {}
    for name, columns in BACKUP_TABLES.items():
        width = len(columns.split(","))
        rows = tables[name]
        if not isinstance(rows, list) or any(
            not isinstance(row, list) or len(row) != width for row in rows
        ):
            raise _invalid(f"has malformed rows in {name}", "BACKUP_FORMAT_UNKNOWN")
        decoded[name] = [[_decode(cell) for cell in row] for row in rows]
    return Snapshot(decoded)


def _check_keyring(root_key: bytes, snapshot: Snapshot) -> None:
    rows = [(int(row[0]), row[1]) for row in snapshot.tables["vault_master_keys"]]
    if not rows and snapshot.tables["vault_versions"]:
        raise _invalid("holds secrets but no keyring", "BACKUP_FORMAT_UNKNOWN")
    if rows:
        try:
            unwrap_keyring(root_key, rows)
        except MasterKeyMismatch:
            raise _invalid(
                "was made with another master key", "BACKUP_KEY_MISMATCH"
            ) from None


def _check_chain(audit_key: bytes, snapshot: Snapshot) -> None:
    previous, expected = GENESIS_HASH, 1
    for row in snapshot.tables["vault_audit_events"]:
        event = AuditRecord(*row)
        if (
            event.sequence != expected
            or event.previous_hash != previous
            or chain_hash(audit_key, event) != event.hash
        ):
            raise _invalid(
                f"has a broken audit chain at event {expected}",
                "BACKUP_AUDIT_CHAIN_BROKEN",
            )
        previous, expected = event.hash, expected + 1
    head = snapshot.tables["vault_audit_head"]
    if head and (int(head[0][1]), head[0][2]) != (expected - 1, previous):
        raise _invalid("has a broken audit chain head", "BACKUP_AUDIT_CHAIN_BROKEN")


def _encode(cell: Any) -> Any:
    if isinstance(cell, bytes | bytearray | memoryview):
        return {"b": base64.b64encode(bytes(cell)).decode()}
    return cell


def _decode(cell: Any) -> Any:
    if isinstance(cell, dict):
        return base64.b64decode(cell["b"])
    return cell


def _invalid(description: str, reason: str) -> InvalidArgument:
    return InvalidArgument("data", "the snapshot " + description, reason=reason)
