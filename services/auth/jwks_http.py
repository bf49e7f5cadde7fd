"""What auth publishes to verifiers over plain HTTP: its JWKS and its revocations.

`/.well-known/jwks.json` is what gateways (`jwt_authn`) and the services'
verifiers fetch; `/.well-known/revoked-tokens.json` lists the ids of revoked,
unexpired access tokens, which the services' verifiers poll. Both carry an
ETag, so an unchanged document costs a poller a 304 and no body.
"""

from __future__ import annotations

import hashlib
import json

from aiohttp import web

from services.auth.denylist import Denylist
from services.auth.keyring import SigningKeyRing
from shared.revocations import REVOCATIONS_PATH, revocations_document

JWKS_PATH = "/.well-known/jwks.json"


def jwks_routes(keyring: SigningKeyRing, max_age_seconds: int) -> list[web.RouteDef]:
    """The route serving `keyring`'s published keys with a `Cache-Control: max-age`."""

    async def serve_jwks(request: web.Request) -> web.Response:
        return _conditional(
            request,
            keyring.jwks_json(),
            "application/jwk-set+json",
            f"public, max-age={max_age_seconds}",
        )

    return [web.get(JWKS_PATH, serve_jwks)]


def revocation_routes(denylist: Denylist) -> list[web.RouteDef]:
    """The route serving the denylist; pollers revalidate it on every fetch."""
    rendered: tuple[int, bytes] = (-1, b"")

    async def serve_revocations(request: web.Request) -> web.Response:
        nonlocal rendered
        if rendered[0] != denylist.version:  # render once per change
            document = revocations_document(denylist.snapshot())
            rendered = (denylist.version, json.dumps(document).encode())
        return _conditional(request, rendered[1], "application/json", "no-cache")

    return [web.get(REVOCATIONS_PATH, serve_revocations)]


def _conditional(
    request: web.Request, body: bytes, content_type: str, cache_control: str
) -> web.Response:
    """`body` with an ETag, or 304 when the caller already holds it."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": cache_control, "ETag": etag}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, headers=headers)
