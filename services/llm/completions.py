"""A request from start to end: the response cache, the router, usage rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from services.llm.models import CompletionRequest, Outcome, ProviderConfig
from services.llm.response_cache import ResponseCache
from services.llm.router import (
    Delta,
    Done,
    ProviderRouter,
    RequestRun,
    RouterEvent,
    Start,
)
from services.llm.store import RequestRecord
from services.llm.usage import UsageRecorder
from shared.errors import EmpireError


class CompletionService:
    def __init__(
        self,
        router: ProviderRouter,
        recorder: UsageRecorder,
        cache: ResponseCache | None = None,
    ) -> None:
        self.router = router
        self.recorder = recorder
        self.cache = cache

    async def complete(self, request: CompletionRequest, deadline: float) -> Outcome:
        """The answer to `request`, from the cache or from a provider."""
        run = self.router.begin(request, deadline)
        wall = time.time()
        use_cache = self.cache is not None and request.deterministic
        if use_cache and not request.skip_cache:
            outcome = await self._from_cache(run)
            if outcome is not None:
                self._record(run, wall, outcome=outcome, streamed=False)
                return outcome
        try:
            outcome = await self.router.complete(run)
        except EmpireError as error:
            self._record(run, wall, error=error, streamed=False)
            raise
        self._record(run, wall, outcome=outcome, streamed=False)
        if use_cache and not request.skip_cache and self.cache is not None:
            self.cache.store_later(
                request,
                outcome.provider.provider_id,
                outcome.provider.model,
                outcome.completion,
            )
        return outcome

    async def stream(
        self, request: CompletionRequest, deadline: float, *, allow_reset: bool
    ) -> AsyncIterator[RouterEvent]:
        """The answer to `request` as router events; a cached answer comes as
        one start, one delta and the done event."""
        run = self.router.begin(request, deadline)
        wall = time.time()
        use_cache = self.cache is not None and request.deterministic
        use_cache = use_cache and not request.skip_cache
        if use_cache:
            cached = await self._from_cache(run)
            if cached is not None:
                self._record(run, wall, outcome=cached, streamed=True)
                yield Start(cached.provider)
                if cached.completion.text:
                    yield Delta(cached.completion.text)
                yield Done(cached)
                return
        try:
            async for event in self.router.stream(run, allow_reset=allow_reset):
                if isinstance(event, Done):
                    self._record(run, wall, outcome=event.outcome, streamed=True)
                    if use_cache and self.cache is not None:
                        self.cache.store_later(
                            request,
                            event.outcome.provider.provider_id,
                            event.outcome.provider.model,
                            event.outcome.completion,
                        )
                yield event
        except EmpireError as error:
            self._record(run, wall, error=error, streamed=True)
            raise

    async def _from_cache(self, run: RequestRun) -> Outcome | None:
        assert self.cache is not None
        hit = await self.cache.lookup(run.request, run.deadline)
        if hit is None:
            return None
        provider = self.router.registry.get(hit.provider_id) or ProviderConfig(
            provider_id=hit.provider_id,
            kind="openai",
            endpoint="",
            model=hit.model,
            route=run.request.route,
        )
        loop = asyncio.get_running_loop()
        return Outcome(
            request_id=run.request_id,
            provider=provider,
            completion=hit.completion,
            cached=True,
            latency_seconds=loop.time() - run.started,
        )

    def _record(
        self,
        run: RequestRun,
        wall: float,
        *,
        streamed: bool,
        outcome: Outcome | None = None,
        error: EmpireError | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        completion = outcome.completion if outcome else None
        self.recorder.add_request(
            RequestRecord(
                request_id=run.request_id,
                route=run.request.route,
                time_ms=int(wall * 1000),
                latency_ms=(loop.time() - run.started) * 1000,
                ok=outcome is not None,
                error_reason=error.reason if error else "",
                provider_id=outcome.provider.provider_id if outcome else "",
                model=outcome.provider.model if outcome else "",
                cached=bool(outcome and outcome.cached),
                streamed=streamed,
                attempts=run.attempts,
                input_tokens=completion.input_tokens if completion else 0,
                output_tokens=completion.output_tokens if completion else 0,
                cost_usd=outcome.cost_usd if outcome else 0.0,
            )
        )
