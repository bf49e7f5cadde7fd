"""Plain records the vault's store reads and writes."""

from __future__ import annotations

from dataclasses import dataclass

from services.vault.envelope import SealedValue


@dataclass(frozen=True)
class SecretRecord:
    key_id: str
    secret_type: int
    labels: dict[str, str]
    rotation_frequency_days: int
    current_version: int
    oldest_version: int
    create_time_ms: int
    update_time_ms: int
    next_rotation_ms: int | None
    delete_time_ms: int | None

    @property
    def deleted(self) -> bool:
        return self.delete_time_ms is not None


@dataclass(frozen=True)
class VersionRecord:
    """One version as stored; `sealed` is None once the version is destroyed."""

    key_id: str
    version: int
    sealed: SealedValue | None
    create_time_ms: int
    destroy_time_ms: int | None


@dataclass(frozen=True)
class ReadResult:
    """A secret and the version a read asked for (None if it has no such version)."""

    secret: SecretRecord
    version: VersionRecord | None


@dataclass(frozen=True)
class AuditRecord:
    sequence: int
    time_ms: int
    actor: str
    action: str
    key_id: str
    version: int
    outcome: int
    reason: str
    value_hmac: str
    previous_hash: str
    hash: str
