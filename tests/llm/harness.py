"""The llm service under test: settings, a signed client, a running server."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2

from empire.llm.v1 import llm_service_pb2 as pb
from empire.llm.v1 import llm_service_pb2_grpc
from services.llm.app import LlmRuntime, create_service
from services.llm.settings import LlmSettings, RouterPolicy, load_settings
from shared.config import Env
from tests.harness.fake_providers import FakeProvider
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer

ALL_SCOPES = ("llm:admin", "llm:complete", "llm:read")

# Short enough to keep each file to seconds, long enough for a loaded machine.
FAST_POLICY = RouterPolicy(
    max_attempts=5,
    retries_per_provider=1,
    backoff_base_seconds=0.01,
    backoff_max_seconds=0.05,
    max_retry_after_seconds=5.0,
    request_deadline_seconds=20.0,
    breaker_consecutive_failures=3,
    breaker_failure_rate=0.5,
    breaker_min_attempts=10,
    breaker_window_seconds=60.0,
    breaker_cooldown_seconds=0.5,
    breaker_cooldown_max_seconds=2.0,
)
REQUEST_TIMEOUT = 2.0
FIRST_TOKEN_TIMEOUT = 1.0
STREAM_IDLE_TIMEOUT = 1.0


def llm_settings(database_url: str, **overrides: Any) -> LlmSettings:
    settings = load_settings(Env({"EMPIRE_LLM_DATABASE_URL": database_url}))
    fields: dict[str, Any] = {
        "server": test_server_settings("llm"),
        "policy": FAST_POLICY,
        "health_check_interval_seconds": 0.0,
    }
    fields.update(overrides)
    return dataclasses.replace(settings, **fields)


def seconds(value: float) -> duration_pb2.Duration:
    result = duration_pb2.Duration()
    result.FromNanoseconds(int(value * 1e9))
    return result


def user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=text)


@dataclasses.dataclass
class StreamResult:
    """What a streaming caller saw."""

    events: list[pb.StreamCompleteResponse]
    error: grpc.aio.AioRpcError | None

    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("event")) for e in self.events]

    def text(self) -> str:
        """The answer as a caller honouring resets assembles it."""
        parts: list[str] = []
        for event in self.events:
            if event.HasField("reset"):
                parts = []
            elif event.HasField("delta"):
                parts.append(event.delta.content)
        return "".join(parts)

    def all_deltas(self) -> str:
        return "".join(e.delta.content for e in self.events if e.HasField("delta"))

    @property
    def done(self) -> pb.StreamDone | None:
        for event in self.events:
            if event.HasField("done"):
                return event.done
        return None


class LlmClient:
    """A stub that signs each call with a token holding the scopes asked for."""

    def __init__(self, channel: grpc.aio.Channel, issuer: LocalIssuer) -> None:
        self.stub = llm_service_pb2_grpc.LlmServiceStub(channel)
        self.issuer = issuer

    def metadata(
        self, scopes: Sequence[str] = ALL_SCOPES
    ) -> tuple[tuple[str, str], ...]:
        token = self.issuer.token(scopes=list(scopes))
        return (("authorization", f"Bearer {token}"),)

    async def call(
        self,
        method: str,
        request: Any,
        scopes: Sequence[str] = ALL_SCOPES,
        timeout: float = 20.0,
    ) -> Any:
        rpc = getattr(self.stub, method)
        return await rpc(request, metadata=self.metadata(scopes), timeout=timeout)

    async def put(
        self,
        provider_id: str,
        fake: FakeProvider | None = None,
        *,
        route: str = "chat",
        priority: int = 0,
        **fields: Any,
    ) -> pb.Provider:
        defaults: dict[str, Any] = {
            "kind": (
                pb.PROVIDER_KIND_ANTHROPIC
                if fake is not None and fake.flavor == "anthropic"
                else pb.PROVIDER_KIND_OPENAI
            ),
            "endpoint": fake.base_url if fake is not None else "http://127.0.0.1:9/v1",
            "model": fake.model if fake is not None else "m",
            "request_timeout": seconds(REQUEST_TIMEOUT),
            "first_token_timeout": seconds(FIRST_TOKEN_TIMEOUT),
            "stream_idle_timeout": seconds(STREAM_IDLE_TIMEOUT),
        }
        defaults.update(fields)
        provider = pb.Provider(
            provider_id=provider_id, route=route, priority=priority, **defaults
        )
        response = await self.call(
            "PutProvider", pb.PutProviderRequest(provider=provider)
        )
        return response.provider

    async def complete(
        self,
        text: str = "hello",
        *,
        route: str = "chat",
        timeout: float = 20.0,
        **fields: Any,
    ) -> pb.CompleteResponse:
        request = pb.CompleteRequest(route=route, messages=[user(text)], **fields)
        return await self.call("Complete", request, timeout=timeout)

    async def stream(
        self,
        text: str = "hello",
        *,
        route: str = "chat",
        timeout: float = 20.0,
        messages: Sequence[pb.Message] | None = None,
        **fields: Any,
    ) -> StreamResult:
        request = pb.StreamCompleteRequest(
            route=route,
            messages=[user(text)] if messages is None else messages,
            **fields,
        )
        events: list[pb.StreamCompleteResponse] = []
        call = self.stub.StreamComplete(
            request, metadata=self.metadata(), timeout=timeout
        )
        try:
            async for event in call:
                events.append(event)
        except grpc.aio.AioRpcError as error:
            return StreamResult(events, error)
        return StreamResult(events, None)


@dataclasses.dataclass
class RunningLlm:
    client: LlmClient
    runtime: LlmRuntime
    settings: LlmSettings


async def start_llm(
    issuer: LocalIssuer,
    database_url: str,
    *,
    environ: dict[str, str] | None = None,
    token: Any = None,
    **overrides: Any,
) -> AsyncIterator[RunningLlm]:
    settings = llm_settings(database_url, **overrides)
    service = await create_service(settings, environ=environ or {}, token=token)
    async with serve(service, settings.server, issuer.verifier()) as running:
        channel = running.channel()
        try:
            yield RunningLlm(
                LlmClient(channel, issuer),
                service.runtime,  # type: ignore[attr-defined]
                settings,
            )
        finally:
            await channel.close()


class Stopwatch:
    """Seconds since it was made, for behavioural time bounds: tests never
    assert performance, only bounds far from real timings (a wait that was or
    was not taken, with the configured wait made large)."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._started


async def eventually(predicate: Any, within: float = 5.0) -> bool:
    """Poll `predicate` until true or `within` seconds passed."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())
