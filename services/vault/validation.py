"""Checks of request fields; each failure names the proto field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2

from shared import pagination
from shared.errors import InvalidArgument
from shared.proto_time import epoch_ms

MAX_KEY_ID_LENGTH = 256
MAX_LABELS = 64
MAX_LABEL_VALUE_LENGTH = 256
MAX_ROTATION_DAYS = 3650
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_DESTROY_VERSIONS = 100
# The range a Timestamp may hold (years 1 to 9999), as every store can keep it.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MAX_INT64 = 2**63 - 1

_KEY_ID = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")
_PREFIX = re.compile(r"[A-Za-z0-9_.\-/]*")
_DOT_SEGMENTS = frozenset({".", ".."})
_LABEL_KEY = re.compile(r"[a-z0-9_\-]{1,63}")
# C0 and C1 controls and DEL; PostgreSQL refuses NUL in text outright.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def key_id(value: str, field: str = "key_id") -> str:
    if not value:
        raise InvalidArgument(field, "must not be empty", reason="KEY_ID_EMPTY")
    if len(value) > MAX_KEY_ID_LENGTH:
        raise InvalidArgument(
            field,
            f"must be at most {MAX_KEY_ID_LENGTH} characters",
            reason="KEY_ID_TOO_LONG",
        )
    # A "." or ".." segment anywhere would name a path, not a key (a fallback
    # file, a gateway URL that normalises it away).
    if not _KEY_ID.fullmatch(value) or _DOT_SEGMENTS & set(value.split("/")):
        raise InvalidArgument(
            field,
            "must be letters, digits, '_', '-', '.' in segments separated by '/'",
            reason="KEY_ID_MALFORMED",
        )
    return value


def prefix(value: str, field: str = "prefix") -> str:
    if len(value) > MAX_KEY_ID_LENGTH or not _PREFIX.fullmatch(value):
        raise InvalidArgument(
            field, "must be the start of a valid key id", reason="PREFIX_MALFORMED"
        )
    return value


def secret_value(value: bytes, limit: int, field: str = "value") -> bytes:
    if not value:
        raise InvalidArgument(field, "must not be empty", reason="VALUE_EMPTY")
    if len(value) > limit:
        raise InvalidArgument(
            field, f"must be at most {limit} bytes", reason="VALUE_TOO_LARGE"
        )
    return value


def labels(value: Mapping[str, str], field: str = "labels") -> dict[str, str]:
    if len(value) > MAX_LABELS:
        raise InvalidArgument(
            field, f"must hold at most {MAX_LABELS} labels", reason="TOO_MANY_LABELS"
        )
    for name, text in value.items():
        if not _LABEL_KEY.fullmatch(name):
            raise InvalidArgument(
                field,
                "keys must be 1-63 lower-case letters, digits, '_' or '-'",
                reason="LABEL_KEY_MALFORMED",
            )
        if len(text) > MAX_LABEL_VALUE_LENGTH:
            raise InvalidArgument(
                field,
                f"values must be at most {MAX_LABEL_VALUE_LENGTH} characters",
                reason="LABEL_VALUE_TOO_LONG",
            )
    return dict(value)


def plain_text(value: str, field: str, max_length: int) -> str:
    """Free text matched against stored text (an actor): bounded, no controls."""
    if len(value) > max_length:
        raise InvalidArgument(
            field, f"must be at most {max_length} characters", reason="OUT_OF_RANGE"
        )
    if _CONTROL.search(value):
        raise InvalidArgument(
            field, "must not contain control characters", reason="CONTROL_CHARACTER"
        )
    return value


def timestamp_ms(value: timestamp_pb2.Timestamp, field: str) -> int:
    """Epoch milliseconds of a valid Timestamp (years 1 to 9999)."""
    if not (
        MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= value.nanos < 1_000_000_000
    ):
        raise InvalidArgument(
            field, "must be a valid time in the years 1 to 9999", reason="OUT_OF_RANGE"
        )
    return epoch_ms(value)


def rotation_days(value: int, field: str = "rotation_frequency_days") -> int:
    if not 0 <= value <= MAX_ROTATION_DAYS:
        raise InvalidArgument(
            field, f"must be 0 to {MAX_ROTATION_DAYS}", reason="OUT_OF_RANGE"
        )
    return value


def expected_version(value: int, field: str = "expected_version") -> int:
    if value < 0:
        raise InvalidArgument(field, "must not be negative", reason="OUT_OF_RANGE")
    return value


def version(value: int, field: str = "version") -> int:
    if value < 0:
        raise InvalidArgument(field, "must not be negative", reason="OUT_OF_RANGE")
    return value


def page_size(value: int, field: str = "page_size") -> int:
    return pagination.page_size(
        value,
        default=DEFAULT_PAGE_SIZE,
        maximum=MAX_PAGE_SIZE,
        over_maximum="reject",
        field=field,
    )


# Readers of page-token positions. A token's digest is no signature, so its
# position is checked like any input; a ValueError makes it INVALID_ARGUMENT.


def key_position(position: Any) -> str:
    """The key id a ListSecrets page ended on."""
    if not isinstance(position, str) or (position and not _KEY_ID.fullmatch(position)):
        raise ValueError("not a key id position")
    return position


def sequence_position(position: Any) -> int:
    """The audit sequence number a page ended on."""
    if type(position) is not int or not 0 <= position <= MAX_INT64:
        raise ValueError("not a sequence position")
    return position


def due_position(position: Any) -> tuple[int, str]:
    """The (due time, key id) a ListDueRotations page ended on."""
    due_ms, key_id = position
    if type(due_ms) is not int or not -MAX_INT64 <= due_ms <= MAX_INT64:
        raise ValueError("not a due time")
    return due_ms, key_position(key_id)
