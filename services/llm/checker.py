"""Active health checks: a tiny completion to each provider on a schedule.

Each check goes through the provider's circuit like any request: a closed
circuit counts the result, and an open circuit whose cool-down has ended gets
its half-open probe from here, so a recovered provider returns to service
without waiting for caller traffic to test it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from services.llm.failures import classify
from services.llm.health import HealthBoard
from services.llm.models import (
    ChatMessage,
    CompletionRequest,
    ErrorClass,
    ProviderConfig,
    ProviderFailure,
)
from services.llm.pool import ClientPool
from services.llm.registry import ProviderRegistry

logger = logging.getLogger(__name__)

PROBE_REQUEST = CompletionRequest(
    route="", messages=(ChatMessage("user", "ping"),), max_tokens=1, temperature=0.0
)


class HealthChecker:
    def __init__(
        self,
        registry: ProviderRegistry,
        pool: ClientPool,
        health: HealthBoard,
        interval_seconds: float,
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._health = health
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(self._run(), name="llm-health-checks")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check_all(self, *, skip_recently_served: bool = False) -> None:
        """Check every enabled provider once, concurrently; with
        `skip_recently_served`, not those that answered a caller well within
        the last interval (they just proved themselves at no extra cost)."""
        providers = [p for p in self._registry.all() if not p.disabled]
        if skip_recently_served:
            since = time.monotonic() - self._interval
            providers = [
                p
                for p in providers
                if not self._health.served_since(p.provider_id, since)
            ]
        await asyncio.gather(*(self.check(p) for p in providers))

    async def check(self, provider: ProviderConfig) -> bool | None:
        """Check one provider; None when its circuit, or the wait it asked
        for with a `Retry-After`, allowed no check now."""
        record = self._health.get(provider.provider_id)
        loop = asyncio.get_running_loop()
        if record.paced_until > loop.time():
            return None  # a check is a request too: honour the wait
        admission = record.breaker.try_acquire()
        if admission is None:
            return None
        started = loop.time()
        try:
            async with asyncio.timeout(provider.request_timeout_seconds):
                client = await self._pool.client_for(provider)
                await client.complete(PROBE_REQUEST)
        except Exception as error:
            failure = _failure_of(error)
            if failure is None:
                record.breaker.release(admission)
                logger.exception(
                    "health check of %s failed oddly", provider.provider_id
                )
                return False
            self._health.record_failure(provider.provider_id, failure, admission)
            self._health.record_check(provider.provider_id, False)
            return False
        except asyncio.CancelledError:
            record.breaker.release(admission)
            raise
        latency = loop.time() - started
        self._health.record_success(provider.provider_id, latency, admission)
        self._health.record_check(provider.provider_id, True)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check_all(skip_recently_served=True)
            except Exception:  # noqa: BLE001 - checks must go on
                logger.exception("health checks failed")


def _failure_of(error: Exception) -> ProviderFailure | None:
    if isinstance(error, TimeoutError):
        return ProviderFailure(ErrorClass.TIMEOUT, "the health check timed out")
    try:
        return classify(error)
    except Exception:  # noqa: BLE001 - not a provider failure: a bug
        return None
