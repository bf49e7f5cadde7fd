"""The master key's uses: sealing signing keys, and keyed hashes of bearer secrets.

One master key yields independent sub-keys through HKDF, one per purpose, so a
hash of an API key can never be mistaken for one of a refresh token and no
sub-key reveals another.

The master key can be rotated. Beside the current key the service may be given
*accepted* keys: what was stored under one of them still opens or matches, but
nothing new is ever sealed or hashed with them. Each stored hash starts with a
label naming the key that made it (`<label>$<hex>`), so the store can count what
still depends on an accepted key; hashes from before labels existed have none
and are tried under every key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_BYTES = 12
_SEAL_VERSION = b"\x01"
LABEL_SEPARATOR = "$"


class SealError(Exception):
    """A sealed value does not open under this master key (wrong key, or tampered)."""


@dataclass(frozen=True)
class HashMatch:
    """Whether a presented secret matched its stored hash, and whether that
    hash is already what the current key makes (else it should be rewritten)."""

    matches: bool
    up_to_date: bool = False


class _KeyUses:
    """The sub-keys of one master key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self.label = _derive(key, b"empire-auth key label v1")[:4].hex()
        self.sealer = AESGCM(_derive(key, b"empire-auth signing-key seal v1"))
        self.api_key_mac = _derive(key, b"empire-auth api-key hash v1")
        self.refresh_mac = _derive(key, b"empire-auth refresh-token hash v1")


class MasterKey:
    """Seals private keys (AES-256-GCM) and hashes API keys and refresh tokens."""

    def __init__(self, key: bytes, accepted: Sequence[bytes] = ()) -> None:
        self._current = _KeyUses(key)
        labels = {self._current.label}
        self._accepted: list[_KeyUses] = []
        for extra in accepted:
            uses = _KeyUses(extra)
            if uses.label not in labels:
                labels.add(uses.label)
                self._accepted.append(uses)

    @property
    def label(self) -> str:
        """The current key's label, which every new hash starts with."""
        return self._current.label

    @property
    def has_accepted_keys(self) -> bool:
        return bool(self._accepted)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """Encrypt `plaintext` under the current key, bound to `context` (the
        key id and algorithm)."""
        nonce = os.urandom(_NONCE_BYTES)
        body = self._current.sealer.encrypt(nonce, plaintext, context)
        return _SEAL_VERSION + nonce + body

    def open(self, sealed: bytes, context: bytes) -> bytes:
        return self.open_noting_key(sealed, context)[0]

    def open_noting_key(self, sealed: bytes, context: bytes) -> tuple[bytes, bool]:
        """The plaintext, and whether it was sealed under the current key."""
        if sealed[:1] != _SEAL_VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise SealError("not a sealed value")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        for uses in self._all():
            try:
                return uses.sealer.decrypt(nonce, body, context), uses is self._current
            except InvalidTag:
                continue
        raise SealError("the sealed value does not open")

    def hash_api_key(self, api_key: str) -> str:
        return _labelled(self._current, self._current.api_key_mac, api_key)

    def match_api_key(self, api_key: str, stored: str) -> HashMatch:
        """Compares `api_key` with its stored hash under the key that made it."""
        for uses in self._makers_of(stored):
            expected = _labelled(uses, uses.api_key_mac, api_key)
            if LABEL_SEPARATOR not in stored:
                expected = expected.split(LABEL_SEPARATOR, 1)[1]
            if hmac.compare_digest(expected, stored):
                labelled = LABEL_SEPARATOR in stored
                return HashMatch(True, up_to_date=uses is self._current and labelled)
        return HashMatch(False)

    def hash_refresh_token(self, token: str) -> str:
        return _labelled(self._current, self._current.refresh_mac, token)

    def refresh_token_hashes(self, token: str) -> list[str]:
        """Every hash `token` may be stored under: the current key's first."""
        labelled = [_labelled(uses, uses.refresh_mac, token) for uses in self._all()]
        bare = [value.split(LABEL_SEPARATOR, 1)[1] for value in labelled]
        return labelled + bare

    def _all(self) -> list[_KeyUses]:
        return [self._current, *self._accepted]

    def _makers_of(self, stored: str) -> list[_KeyUses]:
        """The keys that may have made `stored`: its labelled key, or any."""
        label, separator, _ = stored.partition(LABEL_SEPARATOR)
        if not separator:
            return self._all()
        return [uses for uses in self._all() if uses.label == label]


def _labelled(uses: _KeyUses, mac_key: bytes, secret: str) -> str:
    digest = hmac.new(mac_key, secret.encode(), hashlib.sha256).hexdigest()
    return f"{uses.label}{LABEL_SEPARATOR}{digest}"


def _derive(key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
        key
    )
