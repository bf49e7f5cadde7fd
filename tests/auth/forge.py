"""Hand-built JWTs no honest library would make, and an attacker's JWKS server."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from shared.authn import ACCESS_TOKEN_TYPE


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(
    header: dict[str, Any],
    claims: dict[str, Any],
    sign: Callable[[bytes], bytes] | None = None,
) -> str:
    """`header.claims.signature`; no signature when `sign` is None.

    The header carries an access token's `typ` unless it names its own; a
    `typ` of None leaves it out.
    """
    typed = {"typ": ACCESS_TOKEN_TYPE, **header}
    typed = {name: value for name, value in typed.items() if value is not None}
    signing_input = (
        b64url(json.dumps(typed).encode()) + "." + b64url(json.dumps(claims).encode())
    )
    signature = sign(signing_input.encode()) if sign is not None else b""
    return signing_input + "." + b64url(signature)


def with_raw_header(raw_header: bytes, token: str) -> str:
    """`token` with its header replaced by bytes that need not be JSON at all."""
    _, body, signature = token.split(".")
    return f"{b64url(raw_header)}.{body}.{signature}"


@contextlib.asynccontextmanager
async def attacker_server() -> AsyncIterator[tuple[str, list[str]]]:
    """An attacker's web server: its JWKS URL, and a list of every path asked for."""
    hits: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"keys": []})

    app = web.Application()
    app.router.add_get("/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/jwks.json", hits
    finally:
        await runner.cleanup()


# Headers that are not a valid JWS header for an otherwise honest token, by
# name; each is built around the `kid` of a key the verifier does hold.
_HOSTILE_HEADERS: dict[str, Callable[[str], Any]] = {
    "alg-list": lambda kid: {"alg": ["EdDSA"], "kid": kid},
    "alg-object": lambda kid: {"alg": {"EdDSA": True}, "kid": kid},
    "alg-number": lambda kid: {"alg": 1, "kid": kid},
    "typ-list": lambda kid: {"alg": "EdDSA", "kid": kid, "typ": ["at+jwt"]},
    "crit-string": lambda kid: {"alg": "EdDSA", "kid": kid, "crit": "exp"},
    "crit-empty": lambda kid: {"alg": "EdDSA", "kid": kid, "crit": []},
    "crit-numbers": lambda kid: {"alg": "EdDSA", "kid": kid, "crit": [1]},
    "nested-arrays": lambda kid: b"[" * 4500,
    "nested-objects": lambda kid: b'{"":' * 1200,
    "array": lambda kid: [{"alg": "EdDSA", "kid": kid}],
    "not-utf8": lambda kid: b"\xff\xfe\xfd",
}
HOSTILE_HEADER_NAMES = sorted(_HOSTILE_HEADERS)


def hostile_header(name: str, kid: str) -> bytes:
    built = _HOSTILE_HEADERS[name](kid)
    if isinstance(built, dict):
        # Typed like an honest token, so the one hostile part is what fails.
        built = {"typ": ACCESS_TOKEN_TYPE, **built}
    return built if isinstance(built, bytes) else json.dumps(built).encode()
