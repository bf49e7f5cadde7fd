"""The provider registry: the store's providers, kept in memory for routing.

Routing reads the in-memory snapshot only; edits made through this replica
apply at once, and a background refresh picks up other replicas' edits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from services.llm.models import ProviderConfig
from services.llm.store import LlmStore

logger = logging.getLogger(__name__)


class ProviderRegistry:
    def __init__(self, store: LlmStore) -> None:
        self._store = store
        self._by_id: dict[str, ProviderConfig] = {}
        self._by_route: dict[str, list[ProviderConfig]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[ProviderConfig], None]] = []

    async def load(self) -> None:
        providers = await self._store.list_providers()
        previous = self._by_id
        self._index(providers)
        for provider_id, old in previous.items():
            if self._by_id.get(provider_id) != old:
                self._notify(old)

    def start_refresh(self, interval_seconds: float) -> None:
        self._task = asyncio.create_task(
            self._refresh_forever(interval_seconds), name="llm-registry-refresh"
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def on_change(self, listener: Callable[[ProviderConfig], None]) -> None:
        """Call `listener` with the old config of a provider replaced or removed."""
        self._listeners.append(listener)

    # -- reads ---------------------------------------------------------------------

    def get(self, provider_id: str) -> ProviderConfig | None:
        return self._by_id.get(provider_id)

    def route(self, route: str) -> list[ProviderConfig]:
        """The enabled providers of `route`, by priority then id."""
        return self._by_route.get(route, [])

    def serves(self, route: str) -> bool:
        return bool(self._by_route.get(route))

    def all(self) -> list[ProviderConfig]:
        return sorted(
            self._by_id.values(), key=lambda p: (p.route, p.priority, p.provider_id)
        )

    # -- writes --------------------------------------------------------------------

    async def put(self, provider: ProviderConfig) -> tuple[ProviderConfig, bool]:
        now_ms = int(time.time() * 1000)
        provider = replace(provider, create_time_ms=now_ms, update_time_ms=now_ms)
        stored, created = await self._store.put_provider(provider)
        old = self._by_id.get(stored.provider_id)
        self._index(
            [p for p in self._by_id.values() if p.provider_id != stored.provider_id]
            + [stored]
        )
        if old is not None:
            self._notify(old)
        return stored, created

    async def delete(self, provider_id: str) -> bool:
        deleted = await self._store.delete_provider(provider_id)
        old = self._by_id.get(provider_id)
        self._index([p for p in self._by_id.values() if p.provider_id != provider_id])
        if old is not None:
            self._notify(old)
        return deleted

    def _index(self, providers: list[ProviderConfig]) -> None:
        by_route: dict[str, list[ProviderConfig]] = {}
        for provider in providers:
            if not provider.disabled:
                by_route.setdefault(provider.route, []).append(provider)
        for members in by_route.values():
            members.sort(key=lambda p: (p.priority, p.provider_id))
        self._by_id = {p.provider_id: p for p in providers}
        self._by_route = by_route

    def _notify(self, old: ProviderConfig) -> None:
        for listener in self._listeners:
            listener(old)

    async def _refresh_forever(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.load()
            except Exception as exc:  # noqa: BLE001 - keep routing on the snapshot
                logger.warning(
                    "provider registry not refreshed: %s", type(exc).__name__
                )
