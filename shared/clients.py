"""Channels and stubs for calling the suite's services, with deadlines and a token."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from shared.errors import Unavailable

TokenSource = Callable[[], Awaitable[str]] | Callable[[], str] | str | None

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.enable_retries", 1),
    # With a headless Service (`dns:///vault-headless:50052`) every replica is
    # used, not only the first address resolved.
    ("grpc.lb_policy_name", "round_robin"),
]


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel; TLS belongs to the mesh or the gateway in front."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


class ServiceClient:
    """Wraps a generated stub: each call gets the bearer token and a deadline.

    `client.GetSecret(request)` calls the stub's `GetSecret` with
    `timeout=self.timeout` unless the caller passes its own `timeout`.
    """

    def __init__(
        self,
        stub: Any,
        *,
        token: TokenSource = None,
        timeout: float = 5.0,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.stub = stub
        self.timeout = timeout
        self.channel = channel
        self._token = token

    async def close(self) -> None:
        """Close the channel, if this client opened it."""
        if self.channel is not None:
            await self.channel.close()

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
            # The call's deadline covers getting its token too: a stalled
            # auth must not hold a caller past the time it gave the call.
            timeout = kwargs.get("timeout")
            started = time.monotonic()
            try:
                resolved = await asyncio.wait_for(token, timeout)  # type: ignore[arg-type]
            except TimeoutError:
                raise Unavailable(
                    "no token from auth in time for the call",
                    reason="AUTH_UNAVAILABLE",
                ) from None
            if timeout is not None:
                spent = time.monotonic() - started
                kwargs["timeout"] = max(timeout - spent, 0.001)
            kwargs["metadata"] = (*kwargs.get("metadata", ()), bearer(resolved))
            return await method(request, **kwargs)

        return awaiting_token()


_STUBS = {
    "auth": ("empire.auth.v1.auth_service_pb2_grpc", "AuthServiceStub"),
    "vault": ("empire.vault.v1.vault_service_pb2_grpc", "VaultServiceStub"),
    "cache": ("empire.cache.v1.cache_service_pb2_grpc", "CacheServiceStub"),
    "llm": ("empire.llm.v1.llm_service_pb2_grpc", "LlmServiceStub"),
    "echo": ("empire.echo.v1.echo_service_pb2_grpc", "EchoServiceStub"),
}


def connect(
    service: str,
    target: str,
    *,
    token: TokenSource = None,
    timeout: float = 5.0,
    channel: grpc.aio.Channel | None = None,
) -> ServiceClient:
    """A client for one of the suite's services at `target` (`host:port`)."""
    module_name, stub_name = _STUBS[service]
    stub_class = getattr(importlib.import_module(module_name), stub_name)
    if channel is not None:
        return ServiceClient(stub_class(channel), token=token, timeout=timeout)
    owned = open_channel(target)
    return ServiceClient(stub_class(owned), token=token, timeout=timeout, channel=owned)


def bearer(token: str) -> tuple[str, str]:
    """The metadata entry that carries an access token."""
    return ("authorization", f"Bearer {token}")
