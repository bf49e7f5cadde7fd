"""The completion cache, kept by the cache service; optional and never fatal.

Deterministic requests (temperature 0, or marked cacheable) are looked up
before routing and stored after a fresh answer. Any cache failure or slowness
is logged and ignored: a cache outage never fails a completion.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from services.llm.dependencies import dependency_budget
from services.llm.models import Completion, CompletionRequest

logger = logging.getLogger(__name__)


class CachedAnswer:
    def __init__(self, provider_id: str, model: str, completion: Completion) -> None:
        self.provider_id = provider_id
        self.model = model
        self.completion = completion


def cache_key(request: CompletionRequest) -> str:
    """A digest of everything that shapes the answer; the prompt is not kept."""
    canonical = json.dumps(
        {
            "route": request.route,
            "messages": [[m.role, m.content] for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(request.stop),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "v1:" + hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache:
    """Lookup and Store through a `ServiceClient` over the cache service."""

    def __init__(self, client: Any, cache_route: str, timeout_seconds: float) -> None:
        self._client = client
        self._route = cache_route
        self._timeout = timeout_seconds
        self._pending: set[asyncio.Task[None]] = set()

    async def lookup(
        self, request: CompletionRequest, deadline: float | None = None
    ) -> CachedAnswer | None:
        """The cached answer, or None; takes no more than a share of the time
        left until `deadline` (event-loop time), so providers keep the rest."""
        from empire.cache.v1 import cache_service_pb2

        budget = dependency_budget(self._timeout, deadline)
        if budget <= 0:
            return None
        try:
            # Bounds the wait for the call's token too, not only the call.
            async with asyncio.timeout(budget):
                response = await self._client.Lookup(
                    cache_service_pb2.LookupRequest(
                        route_id=self._route, key=cache_key(request)
                    ),
                    timeout=budget,
                )
        except Exception as exc:  # noqa: BLE001 - a cache outage is not fatal
            logger.warning("completion cache lookup failed: %s", _name(exc))
            return None
        if response.result != cache_service_pb2.LOOKUP_RESULT_HIT:
            return None
        try:
            return _decode(bytes(response.value))
        except (ValueError, KeyError, TypeError):
            logger.warning("completion cache held an unreadable entry")
            return None

    def store_later(
        self,
        request: CompletionRequest,
        provider_id: str,
        model: str,
        answer: Completion,
    ) -> None:
        """Store in the background; the caller does not wait for it."""
        task = asyncio.create_task(self._store(request, provider_id, model, answer))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=self._timeout)

    async def _store(
        self,
        request: CompletionRequest,
        provider_id: str,
        model: str,
        answer: Completion,
    ) -> None:
        from empire.cache.v1 import cache_service_pb2

        value = json.dumps(
            {
                "provider_id": provider_id,
                "model": model,
                "text": answer.text,
                "finish_reason": answer.finish_reason,
                "input_tokens": answer.input_tokens,
                "output_tokens": answer.output_tokens,
            }
        ).encode()
        try:
            # The answer was sent: no caller waits, so the store is bounded by
            # its own timeout alone, the wait for its token included.
            async with asyncio.timeout(self._timeout):
                await self._client.Store(
                    cache_service_pb2.StoreRequest(
                        route_id=self._route, key=cache_key(request), value=value
                    ),
                    timeout=self._timeout,
                )
        except Exception as exc:  # noqa: BLE001 - a cache outage is not fatal
            logger.warning("completion cache store failed: %s", _name(exc))


def _decode(value: bytes) -> CachedAnswer:
    data = json.loads(value)
    completion = Completion(
        text=str(data["text"]),
        finish_reason=data["finish_reason"],
        input_tokens=int(data["input_tokens"]),
        output_tokens=int(data["output_tokens"]),
    )
    return CachedAnswer(str(data["provider_id"]), str(data["model"]), completion)


def _name(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return str(code().name)
        except Exception:  # noqa: BLE001
            pass
    return type(exc).__name__
