"""How a client talks to the gateway: REST with JSON, gRPC, and grpc-web frames."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

GRPC_WEB_DATA = 0x00
GRPC_WEB_TRAILERS = 0x80


@dataclass(frozen=True)
class RestAnswer:
    status: int
    body: Any
    headers: dict[str, str]


def rest(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> RestAnswer:
    """One REST call; the body is JSON both ways (text when it is not JSON)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return _answer(response.status, response.read(), response.headers)
    except urllib.error.HTTPError as error:
        return _answer(error.code, error.read(), error.headers)


def _answer(status: int, raw: bytes, headers: Any) -> RestAnswer:
    try:
        body: Any = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        body = raw.decode(errors="replace")
    return RestAnswer(status, body, {k.lower(): v for k, v in headers.items()})


def b64(value: bytes) -> str:
    """How proto3 JSON spells `bytes`."""
    return base64.b64encode(value).decode()


def grpc_web_call(
    base_url: str, method: str, message: bytes, token: str | None
) -> tuple[int, list[bytes], dict[str, str]]:
    """A grpc-web (binary) call as a browser makes it.

    Returns the HTTP status, the response messages in order and the trailers
    (grpc-status and grpc-message), which grpc-web sends as a final frame or,
    for an immediate refusal, as headers.
    """
    frame = bytes([GRPC_WEB_DATA]) + len(message).to_bytes(4, "big") + message
    request = urllib.request.Request(base_url + method, data=frame, method="POST")
    request.add_header("content-type", "application/grpc-web+proto")
    request.add_header("x-grpc-web", "1")
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), error.headers
    messages, trailers = parse_grpc_web(raw)
    for name in ("grpc-status", "grpc-message"):
        if name in headers and name not in trailers:
            trailers[name] = headers[name]
    return status, messages, trailers


def parse_grpc_web(raw: bytes) -> tuple[list[bytes], dict[str, str]]:
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset + 5 <= len(raw):
        flag = raw[offset]
        length = int.from_bytes(raw[offset + 1 : offset + 5], "big")
        payload = raw[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flag & GRPC_WEB_TRAILERS:
            for line in payload.decode().split("\r\n"):
                name, _, value = line.partition(":")
                if name:
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def jwt_header(token: str) -> dict[str, Any]:
    """The unverified JOSE header of a JWT (to read its `kid`)."""
    segment = token.split(".")[0]
    padded = segment + "=" * (-len(segment) % 4)
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return header
