"""Envelope encryption: a fresh AES-256-GCM data key per secret version.

Each data key is wrapped by one version of the master keyring. Associated data
binds every ciphertext and every wrapped key to its key id and version, so a
ciphertext moved to another row, or a data key swapped between rows, fails
authentication instead of decrypting.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.vault.errors import DataLoss

KEY_BYTES = 32
NONCE_BYTES = 12
_CONTEXT = b"empire.vault.v1"


@dataclass(frozen=True)
class SealedValue:
    """What the database holds for one version: nothing here is plaintext."""

    master_version: int
    wrapped_key: bytes
    ciphertext: bytes


def seal_with(key: bytes | AESGCM, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead(key).encrypt(nonce, plaintext, associated)


def open_with(key: bytes | AESGCM, blob: bytes, associated: bytes) -> bytes:
    """Decrypts `blob`; raises `InvalidTag` on any tampering or a wrong key."""
    if len(blob) < NONCE_BYTES + 16:
        raise InvalidTag()
    return _aead(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)


def _aead(key: bytes | AESGCM) -> AESGCM:
    return key if isinstance(key, AESGCM) else AESGCM(key)


def derive_key(root: bytes, purpose: str) -> bytes:
    """A subkey of the master key for one purpose (audit MACs, backups)."""
    return HKDF(
        algorithm=SHA256(), length=KEY_BYTES, salt=_CONTEXT, info=purpose.encode()
    ).derive(root)


class MasterKeyRing:
    """The unwrapped master key versions, held only in memory."""

    def __init__(self, keys: dict[int, bytes]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._keys = dict(keys)
        self._aeads = {version: AESGCM(key) for version, key in keys.items()}

    @property
    def current_version(self) -> int:
        return max(self._keys)

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys)

    def add(self, version: int, key: bytes) -> None:
        self._keys[version] = key
        self._aeads[version] = AESGCM(key)

    def aead(self, version: int) -> AESGCM:
        """The ready cipher of one version (built once, not per call)."""
        aead = self._aeads.get(version)
        if aead is None:
            self.key(version)  # raises the domain error
        assert aead is not None
        return aead

    def key(self, version: int) -> bytes:
        try:
            return self._keys[version]
        except KeyError:
            raise DataLoss(
                "the secret is wrapped by a master key version this vault lacks",
                reason="MASTER_KEY_VERSION_UNKNOWN",
            ) from None


class EnvelopeCipher:
    """Seals and opens secret versions under a master keyring."""

    def __init__(self, keyring: MasterKeyRing) -> None:
        self.keyring = keyring

    def seal(self, key_id: str, version: int, plaintext: bytes) -> SealedValue:
        data_key = AESGCM.generate_key(bit_length=256)
        binding = _binding(key_id, version)
        master_version = self.keyring.current_version
        return SealedValue(
            master_version=master_version,
            wrapped_key=seal_with(
                self.keyring.aead(master_version), data_key, b"dek|" + binding
            ),
            ciphertext=seal_with(data_key, plaintext, b"value|" + binding),
        )

    def open(self, key_id: str, version: int, sealed: SealedValue) -> bytes:
        binding = _binding(key_id, version)
        try:
            data_key = self._unwrap(sealed, binding)
            return open_with(data_key, sealed.ciphertext, b"value|" + binding)
        except InvalidTag:
            raise DataLoss(
                "the stored secret failed its integrity check",
                reason="CIPHERTEXT_INVALID",
            ) from None

    def rewrap(
        self, key_id: str, version: int, sealed: SealedValue, target: int
    ) -> SealedValue:
        """The same ciphertext with its data key wrapped by master version `target`."""
        binding = _binding(key_id, version)
        try:
            data_key = self._unwrap(sealed, binding)
        except InvalidTag:
            raise DataLoss(
                "a stored data key failed its integrity check",
                reason="CIPHERTEXT_INVALID",
            ) from None
        return SealedValue(
            master_version=target,
            wrapped_key=seal_with(
                self.keyring.aead(target), data_key, b"dek|" + binding
            ),
            ciphertext=sealed.ciphertext,
        )

    def _unwrap(self, sealed: SealedValue, binding: bytes) -> bytes:
        """The value's data key; raises InvalidTag if it or its binding was altered."""
        return open_with(
            self.keyring.aead(sealed.master_version),
            sealed.wrapped_key,
            b"dek|" + binding,
        )


def value_hmac(key: bytes, value: bytes) -> str:
    """A keyed digest of a value for the audit log; reveals nothing without the key."""
    return hmac.digest(key, value, "sha256").hex()


def _binding(key_id: str, version: int) -> bytes:
    return b"%s|%s|%d" % (_CONTEXT, key_id.encode(), version)
