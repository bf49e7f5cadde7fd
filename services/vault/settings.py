"""The vault's settings, read once from `EMPIRE_VAULT_*` variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shared.config import (
    Env,
    ServerSettings,
    database_timeout_seconds,
    database_url,
    load_server_settings,
)
from shared.master_key import read_master_key


@dataclass(frozen=True)
class VaultSettings:
    server: ServerSettings
    database_url: str
    # The master (root) key that unlocks the stored keyring; None means a
    # development start that generates one into `dev_master_key_file`.
    master_key: bytes | None = field(repr=False)
    dev_master_key_file: Path
    max_versions: int
    max_value_bytes: int
    degraded_cache_ttl_seconds: int
    database_probe_seconds: float
    database_timeout_seconds: float
    rewrap_batch_size: int
    rewrap_pause_seconds: float
    max_pending_audit_events: int
    max_backup_bytes: int
    fallback_dir: Path | None
    fallback_env: bool


def load_settings(env: Env | None = None) -> VaultSettings:
    env = env or Env()
    return VaultSettings(
        server=load_server_settings("vault", env),
        database_url=database_url(env, "vault"),
        master_key=read_master_key(env, "vault"),
        dev_master_key_file=env.path("VAULT_DEV_MASTER_KEY_FILE")
        or Path("var/vault-master.key"),
        max_versions=env.int("VAULT_MAX_VERSIONS", 10, minimum=1, maximum=1000),
        max_value_bytes=env.int(
            "VAULT_MAX_VALUE_BYTES", 64 * 1024, minimum=1, maximum=4 * 1024 * 1024
        ),
        degraded_cache_ttl_seconds=env.int(
            "VAULT_DEGRADED_CACHE_TTL_SECONDS", 300, minimum=0, maximum=86400
        ),
        database_probe_seconds=env.float(
            "VAULT_DATABASE_PROBE_SECONDS", 1.0, minimum=0.05, maximum=60.0
        ),
        database_timeout_seconds=database_timeout_seconds(env, "vault"),
        # A batch holds the audit chain's head, which every write waits for.
        rewrap_batch_size=env.int(
            "VAULT_REWRAP_BATCH_SIZE", 50, minimum=1, maximum=1000
        ),
        rewrap_pause_seconds=env.float(
            "VAULT_REWRAP_PAUSE_SECONDS", 0.0, minimum=0.0, maximum=60.0
        ),
        max_pending_audit_events=env.int(
            "VAULT_MAX_PENDING_AUDIT_EVENTS", 10000, minimum=0, maximum=1_000_000
        ),
        max_backup_bytes=env.int(
            "VAULT_MAX_BACKUP_BYTES", 256 * 1024 * 1024, minimum=1024
        ),
        fallback_dir=env.path("VAULT_FALLBACK_DIR"),
        fallback_env=env.bool("VAULT_FALLBACK_ENV", False),
    )
