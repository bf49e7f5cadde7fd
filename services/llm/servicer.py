"""LlmService: the contract's RPCs over the registry, the router and usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from empire.llm.v1 import llm_service_pb2 as pb
from empire.llm.v1 import llm_service_pb2_grpc
from services.llm import convert
from services.llm.coalesce import coalesced
from services.llm.completions import CompletionService
from services.llm.health import HealthBoard
from services.llm.models import CompletionRequest
from services.llm.registry import ProviderRegistry
from services.llm.router import Delta, Done, Reset, Start
from services.llm.settings import RouterPolicy
from services.llm.store import LlmStore
from services.llm.usage import UsageRecorder, summarize
from services.llm.validation import (
    check_id,
    completion_from_proto,
    page_size,
    provider_from_proto,
    timestamp_ms,
)
from shared.errors import InvalidArgument, NotFound
from shared.pagination import decode_page_token, encode_page_token

# Leave the caller this much of its deadline to receive the answer or error.
DEADLINE_MARGIN_SECONDS = 0.02


class LlmServicer(llm_service_pb2_grpc.LlmServiceServicer):
    def __init__(
        self,
        store: LlmStore,
        registry: ProviderRegistry,
        completions: CompletionService,
        health: HealthBoard,
        recorder: UsageRecorder,
        policy: RouterPolicy,
    ) -> None:
        self._store = store
        self._registry = registry
        self._completions = completions
        self._health = health
        self._recorder = recorder
        self._policy = policy

    # -- providers -----------------------------------------------------------------

    async def PutProvider(
        self, request: pb.PutProviderRequest, context: Any
    ) -> pb.PutProviderResponse:
        if not request.HasField("provider"):
            raise InvalidArgument("provider", "is required")
        config = provider_from_proto(request.provider)
        stored, created = await self._registry.put(config)
        return pb.PutProviderResponse(
            provider=convert.provider(stored), created=created
        )

    async def GetProvider(
        self, request: pb.GetProviderRequest, context: Any
    ) -> pb.GetProviderResponse:
        check_id("provider_id", request.provider_id)
        stored = await self._store.get_provider(request.provider_id)
        if stored is None:
            raise NotFound(
                f"provider {request.provider_id} does not exist",
                reason="PROVIDER_NOT_FOUND",
            )
        return pb.GetProviderResponse(provider=convert.provider(stored))

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: Any
    ) -> pb.ListProvidersResponse:
        if request.route:
            check_id("route", request.route)
        size = page_size(request.page_size)
        after = decode_page_token(
            request.page_token,
            _provider_position,
            kind="providers",
            filters=[request.route],
        )
        providers = [
            p
            for p in await self._store.list_providers()
            if (not request.route or p.route == request.route)
            and (after is None or (p.route, p.priority, p.provider_id) > after)
        ]
        page = providers[:size]
        token = ""
        if len(providers) > size:
            last = page[-1]
            token = encode_page_token(
                [last.route, last.priority, last.provider_id],
                kind="providers",
                filters=[request.route],
            )
        return pb.ListProvidersResponse(
            providers=[convert.provider(p) for p in page], next_page_token=token
        )

    async def DeleteProvider(
        self, request: pb.DeleteProviderRequest, context: Any
    ) -> pb.DeleteProviderResponse:
        check_id("provider_id", request.provider_id)
        if not await self._registry.delete(request.provider_id):
            raise NotFound(
                f"provider {request.provider_id} does not exist",
                reason="PROVIDER_NOT_FOUND",
            )
        self._health.forget(request.provider_id)
        return pb.DeleteProviderResponse()

    # -- completions ---------------------------------------------------------------

    async def Complete(
        self, request: pb.CompleteRequest, context: Any
    ) -> pb.CompleteResponse:
        completion = self._validated(request)
        outcome = await self._completions.complete(completion, self._deadline(context))
        return convert.complete_response(outcome)

    async def StreamComplete(
        self, request: pb.StreamCompleteRequest, context: Any
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
        completion = self._validated(request)
        events = self._completions.stream(
            completion, self._deadline(context), allow_reset=request.allow_reset
        )
        async for event in coalesced(events):
            if isinstance(event, Delta):
                yield pb.StreamCompleteResponse(
                    delta=pb.StreamDelta(content=event.text)
                )
            elif isinstance(event, Start):
                yield pb.StreamCompleteResponse(
                    start=pb.StreamStart(
                        provider_id=event.provider.provider_id,
                        model=event.provider.model,
                    )
                )
            elif isinstance(event, Reset):
                yield pb.StreamCompleteResponse(
                    reset=pb.StreamReset(failed_attempt=convert.attempt(event.failed))
                )
            elif isinstance(event, Done):
                yield pb.StreamCompleteResponse(done=convert.stream_done(event.outcome))

    def _validated(
        self, request: pb.CompleteRequest | pb.StreamCompleteRequest
    ) -> CompletionRequest:
        completion = completion_from_proto(request, self._policy)
        if not self._registry.serves(completion.route):
            raise InvalidArgument(
                "route", "no enabled provider serves this route", reason="UNKNOWN_ROUTE"
            )
        return completion

    def _deadline(self, context: Any) -> float:
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        if remaining is None:
            return loop.time() + self._policy.request_deadline_seconds
        return loop.time() + max(0.0, remaining - DEADLINE_MARGIN_SECONDS)

    # -- health and usage ----------------------------------------------------------

    async def GetProviderHealth(
        self, request: pb.GetProviderHealthRequest, context: Any
    ) -> pb.GetProviderHealthResponse:
        if request.provider_id:
            check_id("provider_id", request.provider_id)
        if request.route:
            check_id("route", request.route)
        providers = [
            p
            for p in self._registry.all()
            if (not request.provider_id or p.provider_id == request.provider_id)
            and (not request.route or p.route == request.route)
        ]
        if request.provider_id and not providers:
            raise NotFound(
                f"provider {request.provider_id} does not exist",
                reason="PROVIDER_NOT_FOUND",
            )
        monotonic_now, wall_now = time.monotonic(), time.time()
        return pb.GetProviderHealthResponse(
            providers=[
                convert.provider_health(
                    p, self._health.get(p.provider_id), monotonic_now, wall_now
                )
                for p in providers
            ]
        )

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: Any
    ) -> pb.GetUsageResponse:
        if request.route:
            check_id("route", request.route)
        if request.provider_id:
            check_id("provider_id", request.provider_id)
        start_ms, end_ms = 0, None
        if request.HasField("start_time"):
            start_ms = timestamp_ms("start_time", request.start_time)
        if request.HasField("end_time"):
            end_ms = timestamp_ms("end_time", request.end_time)
        if end_ms is not None and end_ms < start_ms:
            raise InvalidArgument("end_time", "must not be before start_time")
        await self._recorder.flush()
        summary = await summarize(
            self._store,
            start_ms=start_ms,
            end_ms=end_ms,
            route=request.route,
            provider_id=request.provider_id,
        )
        return pb.GetUsageResponse(
            routes=[convert.route_usage(r) for r in summary.routes],
            providers=[convert.provider_usage(p) for p in summary.providers],
        )


def _provider_position(position: Any) -> tuple[str, int, str]:
    route, priority, provider_id = position
    # Anyone can forge a token's digest: int() of a JSON infinity would raise
    # OverflowError, which the token decoder does not turn into a bad token.
    if type(priority) is not int:
        raise TypeError("not a provider position")
    return (str(route), priority, str(provider_id))
