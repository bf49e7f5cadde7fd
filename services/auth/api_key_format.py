"""The API key format: `esk_<id>_<random><checksum>`, GitHub-style.

The `esk_` prefix lets secret scanners recognise a leaked key; the CRC32
checksum lets them (and us) reject a mistyped or made-up key without a lookup;
the short id finds the stored hash. Only the id is ever shown again.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass, field

PREFIX = "esk_"
ID_CHARS = 12
BODY_CHARS = 32
CHECKSUM_CHARS = 6
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FORMAT = re.compile(
    rf"^{PREFIX}([0-9A-Za-z]{{{ID_CHARS}}})_([0-9A-Za-z]{{{BODY_CHARS}}})"
    rf"([0-9A-Za-z]{{{CHECKSUM_CHARS}}})$"
)
MAX_API_KEY_CHARS = 128


@dataclass(frozen=True)
class ParsedApiKey:
    api_key_id: str
    secret: str = field(repr=False)


def generate_api_key() -> ParsedApiKey:
    api_key_id = _random_base62(ID_CHARS)
    return ParsedApiKey(
        api_key_id, format_api_key(api_key_id, _random_base62(BODY_CHARS))
    )


def format_api_key(api_key_id: str, body: str) -> str:
    """The full key for an id and a random body, with its checksum appended."""
    unchecked = f"{PREFIX}{api_key_id}_{body}"
    return unchecked + _checksum(unchecked)


def parse_api_key(text: str) -> ParsedApiKey | None:
    """The key's id if `text` is a well-formed key with a good checksum, else None."""
    match = _FORMAT.match(text)
    if match is None:
        return None
    unchecked, checksum = text[:-CHECKSUM_CHARS], match.group(3)
    if not secrets.compare_digest(_checksum(unchecked), checksum):
        return None
    return ParsedApiKey(match.group(1), text)


def _checksum(unchecked: str) -> str:
    value = zlib.crc32(unchecked.encode())
    digits = []
    for _ in range(CHECKSUM_CHARS):
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))
