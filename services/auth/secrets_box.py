"""The master key's uses: sealing signing keys, and keyed hashes of bearer secrets.

One master key yields independent sub-keys through HKDF, one per purpose, so a
hash of an API key can never be mistaken for one of a refresh token and no
sub-key reveals another.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

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
