"""The JWKS over plain HTTP at `/.well-known/jwks.json`, for gateways and verifiers."""

from __future__ import annotations

import hashlib

from aiohttp import web

from services.auth.keyring import SigningKeyRing

JWKS_PATH = "/.well-known/jwks.json"


def jwks_routes(keyring: SigningKeyRing, max_age_seconds: int) -> list[web.RouteDef]:
    """The route serving `keyring`'s published keys with a `Cache-Control: max-age`."""

    async def serve_jwks(request: web.Request) -> web.Response:
        body = keyring.jwks_json()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {
            "Cache-Control": f"public, max-age={max_age_seconds}",
            "ETag": etag,
        }
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=body, content_type="application/jwk-set+json", headers=headers
        )

    return [web.get(JWKS_PATH, serve_jwks)]
