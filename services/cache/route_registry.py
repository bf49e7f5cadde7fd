"""The routes a replica knows: held in memory, read through to the store."""

from __future__ import annotations

import time

from services.cache.route_store import RouteStore
from services.cache.routes import Route
from shared.errors import NotFound

# An unknown route id is looked up in the store at most this often, so that a
# route another replica just created is found quickly without a query per lookup.
_NEGATIVE_SECONDS = 1.0
_NEGATIVE_LIMIT = 10_000


class RouteRegistry:
    def __init__(self, store: RouteStore) -> None:
        self._store = store
        self._routes: dict[str, Route] = {}
        self._unknown_until: dict[str, float] = {}

    async def load(self) -> None:
        self._routes = {route.route_id: route for route in await self._store.all()}
        self._unknown_until.clear()

    def route_ids(self) -> list[str]:
        return sorted(self._routes)

    def cached(self, route_id: str) -> Route | None:
        return self._routes.get(route_id)

    async def resolve(self, route_id: str) -> Route:
        """The route, or NotFound(ROUTE_NOT_FOUND)."""
        route = self._routes.get(route_id)
        if route is not None:
            return route
        if self._unknown_until.get(route_id, 0.0) < time.monotonic():
            route = await self.refresh(route_id)
            if route is not None:
                return route
        raise NotFound(
            f"route {route_id!r} is not configured", reason="ROUTE_NOT_FOUND"
        )

    async def refresh(self, route_id: str) -> Route | None:
        route = await self._store.get(route_id)
        if route is None:
            self._routes.pop(route_id, None)
            if len(self._unknown_until) > _NEGATIVE_LIMIT:
                self._unknown_until.clear()
            self._unknown_until[route_id] = time.monotonic() + _NEGATIVE_SECONDS
        else:
            self._routes[route_id] = route
            self._unknown_until.pop(route_id, None)
        return route

    async def put(self, route: Route) -> Route:
        stored = await self._store.put(route)
        self._routes[stored.route_id] = stored
        self._unknown_until.pop(stored.route_id, None)
        return stored

    async def delete(self, route_id: str) -> bool:
        deleted = await self._store.delete(route_id)
        self._routes.pop(route_id, None)
        return deleted

    async def page(self, page_size: int, page_token: str) -> tuple[list[Route], str]:
        return await self._store.page(page_size, page_token)
