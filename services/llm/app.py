"""Builds the llm service for the shared server bootstrap."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from empire.llm.v1 import llm_service_pb2_grpc
from services.llm.checker import HealthChecker
from services.llm.completions import CompletionService
from services.llm.health import HealthBoard
from services.llm.keys import ApiKeySource
from services.llm.pool import ClientPool
from services.llm.registry import ProviderRegistry
from services.llm.response_cache import ResponseCache
from services.llm.router import ProviderRouter
from services.llm.servicer import LlmServicer
from services.llm.settings import LlmSettings
from services.llm.store import open_store
from services.llm.usage import UsageRecorder
from shared.clients import ServiceClient, TokenSource, connect
from shared.server import Service

logger = logging.getLogger(__name__)

SERVICE_NAME = "empire.llm.v1.LlmService"
# The SDKs log request bodies (prompts) at DEBUG when their own variables
# (OPENAI_LOG, ANTHROPIC_LOG) ask for it; this service never lets them.
SDK_LOGGERS = ("openai", "anthropic", "httpx2", "httpcore2", "httpx", "httpcore")
SERVICE_SCOPES = ("secrets:read:llm/", "cache:use")


@dataclass
class LlmRuntime:
    """Everything the service holds open, for tests to reach into."""

    servicer: LlmServicer
    router: ProviderRouter
    registry: ProviderRegistry
    health: HealthBoard
    checker: HealthChecker
    recorder: UsageRecorder
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    async def close(self) -> None:
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                await closer()


async def open_runtime(
    settings: LlmSettings,
    *,
    environ: dict[str, str] | None = None,
    token: TokenSource = None,
) -> LlmRuntime:
    """Open the store and start the background work; `environ` (for API keys
    in variables) and `token` (for vault and cache calls) default to the
    process environment and the service API key's tokens."""
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    closers: list[Callable[[], Awaitable[Any]]] = []
    store = await open_store(settings.database_url)
    closers.append(store.close)

    registry = ProviderRegistry(store)
    await registry.load()
    registry.start_refresh(settings.registry_refresh_seconds)
    closers.append(registry.close)

    token = token or _token_source(settings, closers)
    vault = _client(settings.vault_target, "vault", token, settings, closers)
    keys = ApiKeySource(
        environ=environ,
        vault=vault,
        cache_seconds=settings.key_cache_seconds,
        timeout_seconds=settings.dependency_timeout_seconds,
    )
    pool = ClientPool(keys)
    closers.append(pool.close)

    health = HealthBoard(settings.policy)
    recorder = UsageRecorder(store)
    recorder.start()
    closers.append(recorder.close)
    registry.on_change(pool.forget)

    cache_client = _client(settings.cache_target, "cache", token, settings, closers)
    cache = None
    if cache_client is not None:
        cache = ResponseCache(
            cache_client, settings.cache_route, settings.dependency_timeout_seconds
        )
        closers.append(cache.close)

    router = ProviderRouter(registry, pool, health, recorder, settings.policy)
    checker = HealthChecker(
        registry, pool, health, settings.health_check_interval_seconds
    )
    checker.start()
    closers.append(checker.close)

    servicer = LlmServicer(
        store,
        registry,
        CompletionService(router, recorder, cache),
        health,
        recorder,
        settings.policy,
    )
    return LlmRuntime(servicer, router, registry, health, checker, recorder, closers)


def _token_source(
    settings: LlmSettings, closers: list[Callable[[], Awaitable[Any]]]
) -> Any:
    if not settings.service_api_key:
        return None
    from shared.service_token import ApiKeyTokenSource

    source = ApiKeyTokenSource(
        settings.auth_target,
        settings.service_api_key,
        scopes=SERVICE_SCOPES,
        audience=settings.server.token_audience,
    )
    closers.append(source.close)
    return source.token


def _client(
    target: str | None,
    service: str,
    token: Any,
    settings: LlmSettings,
    closers: list[Callable[[], Awaitable[Any]]],
) -> ServiceClient | None:
    if not target:
        return None
    client = connect(
        service, target, token=token, timeout=settings.dependency_timeout_seconds
    )
    closers.append(client.close)
    return client


async def create_service(
    settings: LlmSettings,
    *,
    environ: dict[str, str] | None = None,
    token: TokenSource = None,
) -> Service:
    runtime = await open_runtime(settings, environ=environ, token=token)
    service = Service(
        name="llm",
        servicers=[
            (llm_service_pb2_grpc.add_LlmServiceServicer_to_server, runtime.servicer)
        ],
        service_names=[SERVICE_NAME],
        on_close=runtime.close,
    )
    service.runtime = runtime  # type: ignore[attr-defined]
    return service
