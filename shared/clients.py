"""Channels and stubs for calling the suite's services, with deadlines and a token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

TokenSource = Callable[[], Awaitable[str]] | Callable[[], str] | str | None

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.enable_retries", 1),
]


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel; TLS belongs to the mesh or the gateway in front."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


class ServiceClient:
    """Wraps a generated stub: each call gets the bearer token and a deadline.

    `client.GetSecret(request)` calls the stub's `GetSecret` with
    `timeout=self.timeout` unless the caller passes its own `timeout`.
    """

    def __init__(self, stub: Any, *, token: TokenSource = None, timeout: float = 5.0):
        self.stub = stub
        self.timeout = timeout
        self._token = token

    def __getattr__(self, method_name: str) -> Callable[..., Any]:
        method = getattr(self.stub, method_name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self.timeout)
            if self._token is None:
                return method(request, **kwargs)
            return self._call_with_token(method, request, kwargs)

        return call

    def _call_with_token(self, method: Any, request: Any, kwargs: dict) -> Any:
        token = self._token() if callable(self._token) else self._token
        if isinstance(token, str):
            kwargs["metadata"] = (*kwargs.get("metadata", ()), bearer(token))
            return method(request, **kwargs)

        async def awaiting_token() -> Any:
            resolved = await token  # type: ignore[misc]
            kwargs["metadata"] = (*kwargs.get("metadata", ()), bearer(resolved))
            return await method(request, **kwargs)

        return awaiting_token()


def bearer(token: str) -> tuple[str, str]:
    """The metadata entry that carries an access token."""
    return ("authorization", f"Bearer {token}")
