"""SDK clients per provider, rebuilt when the provider or its key changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.llm.keys import ApiKeySource
from services.llm.models import ProviderConfig
from services.llm.providers import ProviderClient, create_client

logger = logging.getLogger(__name__)


class ClientPool:
    """One live client (and connection pool) per provider."""

    def __init__(self, keys: ApiKeySource) -> None:
        self.keys = keys
        self._clients: dict[str, tuple[ProviderConfig, str | None, ProviderClient]] = {}
        self._retired: set[asyncio.Task[None]] = set()

    async def client_for(
        self, provider: ProviderConfig, deadline: float | None = None
    ) -> ProviderClient:
        """The provider's client; its key is read within a share of the time
        left until `deadline` (event-loop time)."""
        key = await self.keys.get(provider.api_key_id, deadline)
        entry = self._clients.get(provider.provider_id)
        if entry is not None and entry[0] == provider and entry[1] == key:
            return entry[2]
        client = create_client(provider, key)
        self._clients[provider.provider_id] = (provider, key, client)
        if entry is not None:
            self._retire(entry[2], entry[0])
        return client

    def forget(self, provider: ProviderConfig) -> None:
        entry = self._clients.pop(provider.provider_id, None)
        if entry is not None:
            self._retire(entry[2], entry[0])

    async def close(self) -> None:
        for _, _, client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        for task in list(self._retired):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _retire(self, client: ProviderClient, provider: ProviderConfig) -> None:
        # Requests in flight keep using the old client; close it once they are done.
        grace = (
            max(
                provider.request_timeout_seconds,
                provider.first_token_timeout_seconds,
                provider.stream_idle_timeout_seconds,
            )
            + 5.0
        )

        async def close_later() -> None:
            try:
                await asyncio.sleep(grace)
            finally:
                await client.aclose()

        task = asyncio.create_task(close_later())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)
