"""Degraded mode: reads from still-encrypted copies while the database is down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.vault.records import VersionRecord

logger = logging.getLogger(__name__)

_MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class CachedRead:
    secret_type: int
    version: VersionRecord
    fetched_at: float


class ReadCache:
    """The last version read per key id (and per explicit version), encrypted.

    An entry may be served only within `ttl_seconds` of the moment the database
    last confirmed it, so an outage cannot stretch a revoked secret's life.
    """

    def __init__(
        self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[tuple[str, int], CachedRead] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(
        self, key_id: str, requested: int, secret_type: int, version: VersionRecord
    ) -> None:
        entry = CachedRead(secret_type, version, self._clock())
        for slot in {(key_id, requested), (key_id, version.version)}:
            self._entries[slot] = entry
            self._entries.move_to_end(slot)
        while len(self._entries) > _MAX_ENTRIES:
            self._entries.popitem(last=False)

    def lookup(self, key_id: str, requested: int) -> CachedRead | None:
        entry = self._entries.get((key_id, requested))
        if entry is None or self._clock() - entry.fetched_at > self._ttl:
            return None
        return entry

    def forget(self, key_id: str) -> None:
        for slot in [slot for slot in self._entries if slot[0] == key_id]:
            del self._entries[slot]

    def clear(self) -> None:
        self._entries.clear()


class DatabaseHealth:
    """Tracks whether the database answers, and probes it back to health."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        interval_seconds: float,
    ) -> None:
        self._probe = probe
        self._interval = interval_seconds
        self.degraded_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        return self.degraded_since is not None

    def mark_down(self) -> None:
        if self.degraded_since is not None:
            return
        self.degraded_since = time.time()
        logger.warning(
            "vault database unreachable: serving reads from memory, refusing writes"
        )
        self._task = asyncio.create_task(self._recover())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._probe()
            except Exception as error:  # noqa: BLE001 - any failure means still down
                logger.debug("database probe failed: %s", type(error).__name__)
                continue
            outage = time.time() - (self.degraded_since or time.time())
            self.degraded_since = None
            logger.warning("vault database reachable again after %.1fs", outage)
            return
