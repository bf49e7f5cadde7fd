"""Running cache replicas for tests: in-process gRPC servers on free ports."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from empire.cache.v1 import cache_service_pb2 as pb
from services.cache.app import create_service
from services.cache.settings import CacheSettings, load_settings
from shared.clients import ServiceClient, connect
from shared.config import Env
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer

ALL_SCOPES = ["cache:admin", "cache:use", "cache:invalidate", "cache:read"]


def cache_settings(database_url: str, **overrides: object) -> CacheSettings:
    """Settings from an empty environment, on free ports, with `overrides`."""
    settings = load_settings(Env({"EMPIRE_CACHE_DATABASE_URL": database_url}))
    values: dict[str, object] = {"redis_timeout_seconds": 1.0, **overrides}
    return dataclasses.replace(settings, server=test_server_settings("cache"), **values)


@contextlib.asynccontextmanager
async def running_cache(
    settings: CacheSettings, issuer: LocalIssuer, scopes: list[str] | None = None
) -> AsyncIterator[ServiceClient]:
    """A started cache replica and a client holding a token with `scopes`."""
    service = await create_service(settings)
    async with serve(service, settings.server, issuer.verifier()) as server:
        token = issuer.token(scopes=scopes or ALL_SCOPES, subject="test")
        client = connect("cache", server.target, token=token, timeout=10.0)
        try:
            yield client
        finally:
            await client.close()


def route_config(route_id: str = "api_offers", **fields: object) -> pb.RouteConfig:
    values: dict[str, object] = {
        "route_id": route_id,
        "route_pattern": "/api/offers/*",
        "policy": pb.CACHE_POLICY_AGGRESSIVE,
        "ttl_seconds": 300,
    }
    values.update(fields)
    return pb.RouteConfig(**values)  # type: ignore[arg-type]


async def put_route(client: ServiceClient, **fields: object) -> pb.RouteConfig:
    response = await client.PutRouteConfig(
        pb.PutRouteConfigRequest(route_config=route_config(**fields))
    )
    return response.route_config


@pytest.fixture
def sqlite_cache_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cache.db'}"
