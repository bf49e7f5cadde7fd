"""The stored master keyring: key versions wrapped by the configured master key.

Like a secrets manager's barrier keyring, the master key from the environment
only unwraps the keyring; RotateMasterKey adds a version to the keyring, so
rotation needs no new deployment secret.
"""

from __future__ import annotations

import logging
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.vault.envelope import MasterKeyRing, open_with, seal_with
from services.vault.errors import MasterKeyMismatch
from services.vault.store import VaultStore
from shared.db import Executor, UniqueViolation

logger = logging.getLogger(__name__)


def _associated(version: int) -> bytes:
    return b"empire.vault.v1|keyring|%d" % version


def unwrap_keyring(root_key: bytes, rows: list[tuple[int, bytes]]) -> MasterKeyRing:
    """The keyring from its stored rows; raises `MasterKeyMismatch` on a wrong key."""
    keys = {}
    for version, wrapped in rows:
        try:
            keys[version] = open_with(root_key, wrapped, _associated(version))
        except InvalidTag:
            raise MasterKeyMismatch(
                "the configured master key does not open this vault's keyring"
                f" (version {version}); check EMPIRE_VAULT_MASTER_KEY"
            ) from None
    return MasterKeyRing(keys)


async def load_keyring(store: VaultStore, root_key: bytes) -> MasterKeyRing:
    """Opens the stored keyring, creating its first version on a new vault."""
    rows = await store.master_keys()
    if not rows:
        try:
            await add_key_version(store, root_key, 1)
        except UniqueViolation:
            pass  # another replica created it at the same moment
        rows = await store.master_keys()
        logger.info("created the vault's master keyring")
    return unwrap_keyring(root_key, rows)


async def add_key_version(
    store: VaultStore, root_key: bytes, version: int, tx: Executor | None = None
) -> bytes:
    """Stores a fresh key as `version`; raises `UniqueViolation` if it exists."""
    key = AESGCM.generate_key(bit_length=256)
    wrapped = seal_with(root_key, key, _associated(version))
    await store.insert_master_key(version, wrapped, int(time.time() * 1000), tx)
    return key
