"""Hand-built compact JWTs, for tokens no honest library would make."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(
    header: dict[str, Any],
    claims: dict[str, Any],
    sign: Callable[[bytes], bytes] | None = None,
) -> str:
    """`header.claims.signature`; no signature when `sign` is None."""
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    )
    signature = sign(signing_input.encode()) if sign is not None else b""
    return signing_input + "." + b64url(signature)
