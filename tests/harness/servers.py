"""Start a service in the test's own event loop, on free ports."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from shared.authn import TokenVerifier
from shared.config import Env, ServerSettings, load_server_settings
from shared.server import RunningServer, Service, start_server


def test_server_settings(service_name: str, **overrides: Any) -> ServerSettings:
    """Server settings on ports 0 with a short grace, from an empty environment."""
    settings = load_server_settings(service_name, Env({}))
    return dataclasses.replace(
        settings, port=0, http_port=0, shutdown_grace_seconds=0.5, **overrides
    )


@contextlib.asynccontextmanager
async def serve(
    service: Service,
    settings: ServerSettings | None = None,
    verifier: TokenVerifier | None = None,
) -> AsyncIterator[RunningServer]:
    running = await start_server(
        service, settings or test_server_settings("auth"), verifier
    )
    try:
        yield running
    finally:
        await running.stop(0.5)


# Not a test, whatever its name says.
test_server_settings.__test__ = False  # type: ignore[attr-defined]
