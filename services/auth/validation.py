"""Checks on request fields; each failure names the field (INVALID_ARGUMENT)."""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2

from services.auth.tokens import RESERVED_CLAIMS
from shared import pagination
from shared.authn import MAX_TOKEN_BYTES
from shared.errors import InvalidArgument

MAX_SUBJECT_CHARS = 256
MAX_DISPLAY_NAME_CHARS = 128
MAX_CLAIMS_BYTES = 4096
MAX_CREDENTIAL_CHARS = 512
# An access token may carry up to MAX_CLAIMS_BYTES of claims, and an RS256
# signature alone is 342 characters: bound it as the verifiers do.
MAX_ACCESS_TOKEN_CHARS = MAX_TOKEN_BYTES
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_INT64 = 2**63 - 1


def require_text(value: str, field: str, max_chars: int) -> str:
    if not value:
        raise InvalidArgument(field, "required")
    return check_text(value, field, max_chars)


def check_text(value: str, field: str, max_chars: int) -> str:
    if len(value) > max_chars:
        raise InvalidArgument(field, f"at most {max_chars} characters")
    if not value.isprintable():
        raise InvalidArgument(field, "only printable characters")
    return value


def require_credential(
    value: str, field: str, max_chars: int = MAX_CREDENTIAL_CHARS
) -> str:
    """A token or key: present and bounded; never echoed in the error."""
    if not value:
        raise InvalidArgument(field, "required")
    if len(value) > max_chars:
        raise InvalidArgument(field, f"at most {max_chars} characters")
    return value


def check_audience(audience: str, allowed: Collection[str], default: str) -> str:
    if not audience:
        return default
    if audience not in allowed:
        raise InvalidArgument("audience", "not an audience this service issues for")
    return audience


def ttl_seconds(
    ttl: duration_pb2.Duration,
    present: bool,
    default: int,
    minimum: int,
    maximum: int,
    field: str = "ttl",
) -> int:
    if not present:
        return default
    if ttl.nanos or ttl.seconds < minimum or ttl.seconds > maximum:
        raise InvalidArgument(field, f"whole seconds between {minimum}s and {maximum}s")
    return int(ttl.seconds)


def extra_claims(claims: struct_pb2.Struct, field: str = "claims") -> dict[str, Any]:
    for name in sorted(claims.fields):
        if name in RESERVED_CLAIMS:
            raise InvalidArgument(
                f"{field}.{name}", "a registered claim; set by the service"
            )
        if not _all_finite(claims.fields[name]):
            # JSON has no Infinity or NaN; a token must stay valid JSON.
            raise InvalidArgument(f"{field}.{name}", "numbers must be finite")
    values: dict[str, Any] = json_format.MessageToDict(claims)
    if len(json.dumps(values)) > MAX_CLAIMS_BYTES:
        raise InvalidArgument(field, f"at most {MAX_CLAIMS_BYTES} bytes as JSON")
    return values


def _all_finite(value: struct_pb2.Value) -> bool:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return math.isfinite(value.number_value)
    if kind == "struct_value":
        return all(_all_finite(item) for item in value.struct_value.fields.values())
    if kind == "list_value":
        return all(_all_finite(item) for item in value.list_value.values)
    return True


def page_size(value: int) -> int:
    return pagination.page_size(value, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)


def encode_page_token(kind: str, filters: Any, created_ms: int, item_id: str) -> str:
    return pagination.encode_page_token(
        [created_ms, item_id], kind=kind, filters=filters
    )


def decode_page_token(token: str, kind: str, filters: Any) -> tuple[int, str] | None:
    return pagination.decode_page_token(
        token, _created_and_id, kind=kind, filters=filters
    )


def _created_and_id(position: Any) -> tuple[int, str]:
    created, item_id = position
    if not isinstance(created, int) or not isinstance(item_id, str) or not item_id:
        raise ValueError("not a (created_ms, id) position")
    # Anyone can forge a token's digest; a time past BIGINT would reach the
    # store's query and fail there instead of here.
    if not -MAX_INT64 <= created <= MAX_INT64:
        raise ValueError("created_ms out of range")
    return created, item_id
