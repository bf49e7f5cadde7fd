"""The master key's uses: sealing signing keys, and keyed hashes of bearer secrets.

One master key yields independent sub-keys through HKDF, one per purpose, so a
hash of an API key can never be mistaken for one of a refresh token and no
sub-key reveals another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

logger = logging.getLogger(__name__)

_NONCE_BYTES = 12
_SEAL_VERSION = b"\x01"


class SealError(Exception):
    """A sealed value does not open under this master key (wrong key, or tampered)."""


class MasterKey:
    """Seals private keys (AES-256-GCM) and hashes API keys and refresh tokens."""

    # TODO: master-key rotation (re-seal signing keys, keep the old hash keys
    # for stored API keys) is not built; today the key is fixed for life.

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._sealer = AESGCM(_derive(key, b"empire-auth signing-key seal v1"))
        self._api_key_mac = _derive(key, b"empire-auth api-key hash v1")
        self._refresh_mac = _derive(key, b"empire-auth refresh-token hash v1")

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """Encrypt `plaintext`, bound to `context` (the key id and algorithm)."""
        nonce = os.urandom(_NONCE_BYTES)
        return _SEAL_VERSION + nonce + self._sealer.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        if sealed[:1] != _SEAL_VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise SealError("not a sealed value")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._sealer.decrypt(nonce, body, context)
        except InvalidTag:
            raise SealError("the sealed value does not open") from None

    def hash_api_key(self, api_key: str) -> str:
        return hmac.new(self._api_key_mac, api_key.encode(), hashlib.sha256).hexdigest()

    def hash_refresh_token(self, token: str) -> str:
        return hmac.new(self._refresh_mac, token.encode(), hashlib.sha256).hexdigest()


def _derive(key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
        key
    )


def load_or_create_dev_master_key(path: Path) -> bytes:
    """The development master key kept (base64) in `path`, created 0600 if absent."""
    if path.exists():
        key = base64.b64decode(path.read_text().strip())
        if len(key) != 32:
            raise ValueError(f"{path} does not hold a 32-byte base64 key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(base64.b64encode(key).decode() + "\n")
    logger.warning(
        "development start: generated a master key in %s; set EMPIRE_AUTH_MASTER_KEY "
        "or EMPIRE_AUTH_MASTER_KEY_FILE in production",
        path,
    )
    return key
