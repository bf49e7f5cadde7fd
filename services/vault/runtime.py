"""Assembles the vault's parts from its settings: store, keyring, audit, domain."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from services.vault.audit import AuditLog
from services.vault.degraded import DatabaseHealth, ReadCache
from services.vault.envelope import EnvelopeCipher, derive_key
from services.vault.fallback import FallbackSecrets
from services.vault.keyring import load_keyring
from services.vault.rewrap import MasterKeyRotator
from services.vault.settings import VaultSettings
from services.vault.store import VaultStore, open_store
from services.vault.vault import SecretVault
from shared.master_key import development_master_key

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
    rotator = MasterKeyRotator(
        store,
        cipher,
        root_key,
        settings.rewrap_batch_size,
        settings.rewrap_pause_seconds,
    )
    audit_key = derive_key(root_key, "audit-chain")
    # Each batch of writes learns, under the chain lock, the master keys other
    # replicas added, so it seals with the newest before their rewrap can
    # call itself complete.
    audit = AuditLog(
        store,
        audit_key,
        settings.max_pending_audit_events,
        before_writes=rotator.reload_keyring,
    )
    cache = ReadCache(settings.degraded_cache_ttl_seconds)

    async def probe() -> None:
        await store.ping()
        await audit.flush_spool()

    health = DatabaseHealth(probe, settings.database_probe_seconds)
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
        read_patience_seconds=settings.database_timeout_seconds,
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
