"""The 32-byte master key that auth and vault keep their stored keys under.

It comes from `EMPIRE_<SVC>_MASTER_KEY` or `EMPIRE_<SVC>_MASTER_KEY_FILE` (base64,
standard or URL-safe); a development start without either generates one into a
private file. A service that supports rotating it also reads the keys it still
accepts from `EMPIRE_<SVC>_ACCEPTED_MASTER_KEYS`. No error or log line ever
carries a key.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from pathlib import Path

from shared.config import Env, SettingsError

logger = logging.getLogger(__name__)

MASTER_KEY_BYTES = 32


def read_master_key(env: Env, service: str) -> bytes | None:
    """The key from the service's variables, or None when neither is set."""
    variable = f"{service.upper()}_MASTER_KEY"
    inline = env.optional_str(variable)
    if inline is not None:
        return decode_master_key(inline, f"EMPIRE_{variable}")
    path = env.path(f"{variable}_FILE")
    if path is None:
        return None
    text = _read_key_file(path, f"EMPIRE_{variable}_FILE").strip()
    return decode_master_key(text, f"EMPIRE_{variable}_FILE")


def read_accepted_master_keys(env: Env, service: str) -> tuple[bytes, ...]:
    """Further keys the service accepts for what was stored under them (a
    master-key rotation): `EMPIRE_<SVC>_ACCEPTED_MASTER_KEYS`, comma-separated,
    or `..._FILE`, one per line."""
    variable = f"{service.upper()}_ACCEPTED_MASTER_KEYS"
    inline = env.optional_str(variable)
    if inline is not None:
        texts, source = inline.split(","), f"EMPIRE_{variable}"
    else:
        path = env.path(f"{variable}_FILE")
        if path is None:
            return ()
        source = f"EMPIRE_{variable}_FILE"
        texts = _read_key_file(path, source).splitlines()
    keys = []
    for position, text in enumerate(texts, start=1):
        if text.strip():
            keys.append(decode_master_key(text.strip(), f"{source} (key {position})"))
    return tuple(keys)


def _read_key_file(path: Path, variable: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(
            f"{variable}: cannot read the file ({type(error).__name__})"
        ) from None


def decode_master_key(text: str, variable: str) -> bytes:
    """The key in `text`; a bad one raises SettingsError naming `variable` only."""
    standard = text.replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(
            f"{variable}: expected base64 of {MASTER_KEY_BYTES} bytes"
        ) from None
    if len(key) != MASTER_KEY_BYTES:
        raise SettingsError(
            f"{variable}: expected base64 of {MASTER_KEY_BYTES} bytes,"
            f" got {len(key)} bytes"
        )
    return key


def encode_master_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def development_master_key(path: Path) -> bytes:
    """The key of a development start, generated once into `path` (mode 0600)."""
    if path.exists():
        logger.warning("using the development master key in %s", path)
        return decode_master_key(path.read_text().strip(), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(MASTER_KEY_BYTES)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(encode_master_key(key) + "\n")
    logger.warning(
        "no master key set: generated a development master key into %s;"
        " never use it in production",
        path,
    )
    return key
