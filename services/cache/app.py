"""Builds the cache service for the shared server bootstrap."""

from __future__ import annotations

import logging
from pathlib import Path

from empire.cache.v1 import cache_service_pb2_grpc
from services.cache.engine import CacheEngine
from services.cache.route_registry import RouteRegistry
from services.cache.route_store import MIGRATIONS_DIR, RouteStore
from services.cache.servicer import CacheServicer
from services.cache.settings import CacheSettings
from services.cache.shared_tier import RedisTier
from shared.db import Database, open_database, sqlite_path
from shared.server import Service

logger = logging.getLogger(__name__)

SERVICE_NAME = "empire.cache.v1.CacheService"


async def create_engine(settings: CacheSettings) -> tuple[CacheEngine, Database]:
    """The engine and its database, with file routes applied and Redis subscribed."""
    if settings.database_url.startswith("sqlite://") and ":memory:" not in (
        settings.database_url
    ):
        Path(sqlite_path(settings.database_url)).parent.mkdir(
            parents=True, exist_ok=True
        )
    db = await open_database(settings.database_url, MIGRATIONS_DIR)
    routes = RouteRegistry(RouteStore(db))
    for route in settings.file_routes:
        await routes.put(route)
    await routes.load()
    if settings.file_routes:
        logger.info(
            "loaded %s route configs from the config file", len(settings.file_routes)
        )

    tier = None
    if settings.redis_url:
        tier = RedisTier(
            settings.redis_url,
            settings.redis_prefix,
            settings.redis_timeout_seconds,
            settings.replica_id,
        )
    engine = CacheEngine(
        replica_id=settings.replica_id,
        routes=routes,
        l1_max_bytes=settings.l1_max_bytes,
        lease_timeout_s=settings.lease_timeout_seconds,
        disconnected_max_age_s=settings.l1_disconnected_max_age_seconds,
        tier=tier,
        ack_timeout_s=settings.invalidation_ack_timeout_seconds,
        janitor_interval_s=settings.janitor_interval_seconds,
    )
    await engine.start()
    return engine, db


async def create_service(settings: CacheSettings) -> Service:
    engine, db = await create_engine(settings)

    async def close() -> None:
        await engine.close()
        await db.close()

    servicer = CacheServicer(
        engine,
        max_key_bytes=settings.max_key_bytes,
        max_value_bytes=settings.max_value_bytes,
    )
    return Service(
        name="cache",
        servicers=[
            (cache_service_pb2_grpc.add_CacheServiceServicer_to_server, servicer)
        ],
        service_names=[SERVICE_NAME],
        on_close=close,
    )
