"""AIP-158 pagination: page-size checks and opaque page tokens for every list RPC.

A page token carries a JSON position (where the last page ended) together with the
listing's kind and filters, so a token cannot be replayed against another listing
or different filters. A short digest makes a hand-edited or truncated token fail
cleanly; it is not a signature, and positions hold nothing secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from shared.errors import InvalidArgument

T = TypeVar("T")

PAGE_SIZE_REASON = "INVALID_PAGE_SIZE"
PAGE_TOKEN_REASON = "INVALID_PAGE_TOKEN"
_DIGEST_BYTES = 8


def page_size(
    value: int,
    *,
    default: int,
    maximum: int,
    over_maximum: Literal["coerce", "reject"] = "coerce",
    field: str = "page_size",
) -> int:
    """The page size to serve: `default` for 0; above `maximum` coerced or refused."""
    if value < 0 or (value > maximum and over_maximum == "reject"):
        raise InvalidArgument(field, f"must be 0 to {maximum}", reason=PAGE_SIZE_REASON)
    return min(value or default, maximum)


def encode_page_token(position: Any, *, kind: str = "", filters: Any = None) -> str:
    """An opaque token for the page after `position` of this listing and filters."""
    document = json.dumps(
        {"k": kind, "f": filters, "p": position}, separators=(",", ":")
    ).encode()
    raw = _digest(document) + document
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(
    token: str,
    read: Callable[[Any], T],
    *,
    kind: str = "",
    filters: Any = None,
) -> T | None:
    """The position in `token` passed through `read`, or None for the first page.

    `read` turns the JSON position into the caller's type and raises ValueError,
    TypeError, KeyError or IndexError on a wrong shape; every failure, like a token
    from another listing or other filters, is INVALID_ARGUMENT on `page_token`.
    """
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        digest, document = raw[:_DIGEST_BYTES], raw[_DIGEST_BYTES:]
        if not hmac.compare_digest(digest, _digest(document)):
            raise ValueError("digest mismatch")
        data = json.loads(document)
        if data["k"] != kind or data["f"] != json.loads(json.dumps(filters)):
            raise ValueError("token for another listing or other filters")
        return read(data["p"])
    # The digest only catches accidents (anyone can compute it), so a forged
    # token may hold deeply nested JSON (RecursionError) or Infinity where a
    # number is read (OverflowError).
    except (
        binascii.Error,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        RecursionError,
        OverflowError,
    ):
        raise InvalidArgument(
            "page_token",
            "is not a token this listing returned with the same filters",
            reason=PAGE_TOKEN_REASON,
        ) from None


def text_position(position: Any) -> str:
    """A `read` for positions that are one string (a key or an id)."""
    if not isinstance(position, str):
        raise TypeError("position is not a string")
    return position


def integer_position(position: Any) -> int:
    """A `read` for positions that are one integer (a sequence number)."""
    if not isinstance(position, int) or isinstance(position, bool):
        raise TypeError("position is not an integer")
    return position


def _digest(document: bytes) -> bytes:
    return hashlib.blake2b(document, digest_size=_DIGEST_BYTES).digest()
