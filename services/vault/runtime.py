"""Assembles the vault's parts from its settings: store, keyring, audit, domain."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from services.vault.audit import AuditLog
from services.vault.degraded import DatabaseHealth, ReadCache
from services.vault.envelope import EnvelopeCipher, derive_key
from services.vault.fallback import FallbackSecrets
from services.vault.keyring import generate_master_key, load_keyring
from services.vault.rewrap import MasterKeyRotator
from services.vault.settings import VaultSettings, decode_master_key, encode_master_key
from services.vault.store import VaultStore, open_store
from services.vault.vault import SecretVault

logger = logging.getLogger(__name__)


@dataclass
class VaultRuntime:
    settings: VaultSettings
    store: VaultStore
    cipher: EnvelopeCipher
    audit: AuditLog
    cache: ReadCache
    health: DatabaseHealth
    vault: SecretVault
    rotator: MasterKeyRotator
    root_key: bytes
    audit_key: bytes
    backup_key: bytes

    async def close(self) -> None:
        await self.rotator.close()
        await self.audit.close()
        await self.health.close()
        await self.store.close()


async def open_runtime(settings: VaultSettings) -> VaultRuntime:
    root_key = settings.master_key or development_master_key(
        settings.dev_master_key_file
    )
    store = await open_store(settings.database_url, settings.database_timeout_seconds)
    try:
        keyring = await load_keyring(store, root_key)
    except BaseException:
        await store.close()
        raise

    cipher = EnvelopeCipher(keyring)
    audit_key = derive_key(root_key, "audit-chain")
    audit = AuditLog(store, audit_key, settings.max_pending_audit_events)
    cache = ReadCache(settings.degraded_cache_ttl_seconds)

    async def probe() -> None:
        await store.ping()
        await audit.flush_spool()

    health = DatabaseHealth(probe, settings.database_probe_seconds)
    rotator = MasterKeyRotator(
        store,
        cipher,
        root_key,
        settings.rewrap_batch_size,
        settings.rewrap_pause_seconds,
    )
    vault = SecretVault(
        store,
        cipher,
        audit,
        derive_key(root_key, "audit-value-hmac"),
        cache,
        health,
        settings.max_versions,
        FallbackSecrets(
            settings.fallback_dir,
            os.environ if settings.fallback_env else None,
            settings.max_value_bytes,
        ),
        reload_keyring=rotator.reload_keyring,
    )
    await rotator.resume()
    return VaultRuntime(
        settings=settings,
        store=store,
        cipher=cipher,
        audit=audit,
        cache=cache,
        health=health,
        vault=vault,
        rotator=rotator,
        root_key=root_key,
        audit_key=audit_key,
        backup_key=derive_key(root_key, "backup"),
    )


def development_master_key(path: Path) -> bytes:
    """The key of a development start, generated once into `path` (mode 0600)."""
    if path.exists():
        logger.warning("using the development master key in %s", path)
        return decode_master_key(path.read_text().strip(), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_master_key()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(encode_master_key(key) + "\n")
    logger.warning(
        "no EMPIRE_VAULT_MASTER_KEY or EMPIRE_VAULT_MASTER_KEY_FILE: generated a"
        " development master key into %s; never use this in production",
        path,
    )
    return key
