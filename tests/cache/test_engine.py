"""The engine's own bookkeeping, seen where the gRPC face cannot show it."""

from __future__ import annotations

import asyncio

from services.cache.app import create_engine
from services.cache.routes import route_from_proto
from tests.cache.conftest import cache_settings, route_config


async def test_waiters_on_fills_that_never_come_leave_nothing_behind(
    sqlite_cache_url,
):
    """An origin that keeps failing means leases are taken and never stored;
    every key a caller waited on must not stay registered for good."""
    engine, db = await create_engine(
        cache_settings(sqlite_cache_url, lease_timeout_seconds=30.0)
    )
    try:
        route = await engine.routes.put(route_from_proto(route_config()))
        keys = [f"/api/offers/{index}" for index in range(50)]
        leases = [
            await engine.lookup(route, key, {}, request_lease=True) for key in keys
        ]
        # The fillers never store; every other caller gives up waiting.
        waited = await asyncio.gather(
            *(
                engine.lookup(route, key, {}, request_lease=True, max_wait_ms=20)
                for key in keys
                for _ in range(3)
            )
        )
        pending = len(engine._fills)
    finally:
        await engine.close()
        await db.close()

    assert all(answer.lease_token for answer in leases)
    assert all(answer.waited and not answer.lease_token for answer in waited)
    assert pending == 0
