"""Checks of request fields; each failure names the proto field."""

from __future__ import annotations

import re
from collections.abc import Mapping

from shared import pagination
from shared.errors import InvalidArgument

MAX_KEY_ID_LENGTH = 256
MAX_LABELS = 64
MAX_LABEL_VALUE_LENGTH = 256
MAX_ROTATION_DAYS = 3650
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_DESTROY_VERSIONS = 100

_KEY_ID = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")
_PREFIX = re.compile(r"[A-Za-z0-9_.\-/]*")
_LABEL_KEY = re.compile(r"[a-z0-9_\-]{1,63}")


def key_id(value: str, field: str = "key_id") -> str:
    if not value:
        raise InvalidArgument(field, "must not be empty", reason="KEY_ID_EMPTY")
    if len(value) > MAX_KEY_ID_LENGTH:
        raise InvalidArgument(
            field,
            f"must be at most {MAX_KEY_ID_LENGTH} characters",
            reason="KEY_ID_TOO_LONG",
        )
    if not _KEY_ID.fullmatch(value) or value in (".", "..") or "/../" in value:
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
