"""Persistence of route configs on the shared database facade."""

from __future__ import annotations

import time
from pathlib import Path

from empire.cache.v1 import cache_service_pb2 as pb
from services.cache.routes import Route, route_from_proto, route_to_proto
from shared.db import Executor
from shared.pagination import decode_page_token, encode_page_token, text_position

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class RouteStore:
    """Reads and writes route configs; one row per route."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def put(self, route: Route) -> Route:
        now_ms = int(time.time() * 1000)
        config = route_to_proto(route)
        config.update_time.FromMilliseconds(now_ms)
        await self._db.execute(
            "INSERT INTO cache_route_configs (route_id, config, source, update_time_ms)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (route_id) DO UPDATE SET"
            " config = excluded.config, source = excluded.source,"
            " update_time_ms = excluded.update_time_ms",
            (route.route_id, config.SerializeToString(), route.source, now_ms),
        )
        return _decode(config.SerializeToString())

    async def get(self, route_id: str) -> Route | None:
        row = await self._db.fetchone(
            "SELECT config FROM cache_route_configs WHERE route_id = %s", (route_id,)
        )
        return None if row is None else _decode(row[0])

    async def delete(self, route_id: str) -> bool:
        count = await self._db.execute(
            "DELETE FROM cache_route_configs WHERE route_id = %s", (route_id,)
        )
        return bool(count)

    async def all(self) -> list[Route]:
        rows = await self._db.fetchall(
            "SELECT config FROM cache_route_configs ORDER BY route_id", ()
        )
        return [_decode(row[0]) for row in rows]

    async def page(self, page_size: int, page_token: str) -> tuple[list[Route], str]:
        after = decode_page_token(page_token, text_position, kind="routes") or ""
        rows = await self._db.fetchall(
            "SELECT config FROM cache_route_configs WHERE route_id > %s"
            " ORDER BY route_id LIMIT %s",
            (after, page_size + 1),
        )
        routes = [_decode(row[0]) for row in rows[:page_size]]
        more = len(rows) > page_size
        token = encode_page_token(routes[-1].route_id, kind="routes") if more else ""
        return routes, token


def _decode(blob: bytes | memoryview) -> Route:
    return route_from_proto(pb.RouteConfig.FromString(bytes(blob)))
