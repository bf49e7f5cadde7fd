"""API keys from the environment and the real vault; the real cache service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator

import grpc
import pytest

from empire.llm.v1 import llm_service_pb2 as pb
from empire.vault.v1 import vault_service_pb2 as vault_pb
from services.cache.app import create_service as create_cache_service
from services.llm.keys import ApiKeySource
from services.llm.models import ErrorClass, ProviderFailure
from shared.clients import connect
from shared.errors import Unavailable
from tests.cache.conftest import cache_settings, put_route
from tests.harness import fake_providers as faults
from tests.harness.db_fixtures import FaultProxyFactory
from tests.harness.fake_providers import DEFAULT_REPLY, FakeProvider
from tests.harness.grpc_errors import error_info
from tests.harness.servers import serve
from tests.harness.tokens import LocalIssuer
from tests.llm.harness import seconds, start_llm
from tests.vault.conftest import running_vault, vault_settings


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def stalled_service() -> AsyncIterator[str]:
    """A target that accepts connections and never answers, as a stalled
    network or a hung process would."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()


async def never_a_token() -> str:
    """A token source whose auth never answers."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_api_key_from_the_environment_reaches_the_provider(
    issuer: LocalIssuer, sqlite_url: str
) -> None:
    environ = {"EMPIRE_LLM_PROVIDER_KEY_LLM_FAKE": "sk-from-env"}
    async with FakeProvider("anthropic", api_key="sk-from-env") as fake:
        async for llm in start_llm(issuer, sqlite_url, environ=environ):
            await llm.client.put("p", fake, api_key_id="llm/fake")
            response = await llm.client.complete()

    assert response.content == DEFAULT_REPLY
    headers = fake.requests[0].headers
    presented = headers.get("x-api-key") or headers["authorization"].split()[-1]
    assert presented == "sk-from-env"


async def test_missing_key_fails_over_as_credentials_unavailable(
    issuer: LocalIssuer, sqlite_url: str
) -> None:
    async with FakeProvider("openai") as keyed, FakeProvider("openai") as local:
        async for llm in start_llm(issuer, sqlite_url):
            await llm.client.put("keyed", keyed, priority=0, api_key_id="llm/none")
            await llm.client.put("local", local, priority=1)
            response = await llm.client.complete()

    assert response.provider_id == "local"
    assert [(a.provider_id, a.error_class) for a in response.failed_attempts] == [
        ("keyed", pb.ERROR_CLASS_CREDENTIALS_UNAVAILABLE)
    ]
    assert keyed.completions == 0


async def test_api_key_from_the_vault_and_its_rotation_after_a_401(
    issuer: LocalIssuer, sqlite_url: str, tmp_path: object
) -> None:
    vault_url = f"sqlite:///{tmp_path}/vault.db"
    settings = vault_settings(vault_url, os.urandom(32))
    async with running_vault(settings, issuer) as vault:
        await vault.client.put("llm/openai", b"sk-first")

        def token() -> str:
            return issuer.token(scopes=["secrets:read:llm/"], subject="llm")

        async with FakeProvider("openai", api_key="sk-first") as fake:
            async for llm in start_llm(
                issuer, sqlite_url, vault_target=vault.target, token=token
            ):
                await llm.client.put("p", fake, api_key_id="llm/openai")
                first = await llm.client.complete()

                await vault.client.call(
                    "RotateSecret",
                    vault_pb.RotateSecretRequest(
                        key_id="llm/openai", value=b"sk-second"
                    ),
                )
                fake.api_key = "sk-second"
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await llm.client.complete()
                # The 401 dropped the cached key; after the circuit's cool-down
                # the probe reads the rotated key from the vault.
                after = await llm.client.complete()

    assert first.content == after.content == DEFAULT_REPLY
    assert error_info(caught.value).metadata["attempts"] == "p:AUTHENTICATION"
    presented = [r.headers["authorization"] for r in fake.requests]
    assert presented == ["Bearer sk-first", "Bearer sk-first", "Bearer sk-second"]


async def test_a_vault_outage_keeps_serving_with_the_key_read_before(
    issuer: LocalIssuer,
    sqlite_url: str,
    tmp_path: object,
    fault_proxy: FaultProxyFactory,
) -> None:
    vault_url = f"sqlite:///{tmp_path}/vault.db"
    settings = vault_settings(vault_url, os.urandom(32))
    async with running_vault(settings, issuer) as vault:
        await vault.client.put("llm/openai", b"sk-first")
        host, port = vault.target.rsplit(":", 1)
        proxy = await fault_proxy(host, int(port))

        def token() -> str:
            return issuer.token(scopes=["secrets:read:llm/"], subject="llm")

        async with FakeProvider("openai", api_key="sk-first") as fake:
            async for llm in start_llm(
                issuer,
                sqlite_url,
                vault_target=f"127.0.0.1:{proxy.port}",
                token=token,
                key_cache_seconds=0.0,  # every request asks the vault again
            ):
                await llm.client.put("p", fake, api_key_id="llm/openai")
                before = await llm.client.complete()
                proxy.cut()
                during = await llm.client.complete()
                health = await llm.client.call(
                    "GetProviderHealth", pb.GetProviderHealthRequest(provider_id="p")
                )

    assert before.content == during.content == DEFAULT_REPLY
    assert not during.failed_attempts
    presented = [r.headers["authorization"] for r in fake.requests]
    assert presented == ["Bearer sk-first", "Bearer sk-first"]
    assert health.providers[0].state == pb.CIRCUIT_STATE_CLOSED


async def test_an_auth_outage_before_the_vault_read_fails_over(
    issuer: LocalIssuer, sqlite_url: str
) -> None:
    async def token() -> str:
        raise Unavailable("auth is unreachable", reason="AUTH_UNAVAILABLE")

    async with FakeProvider("openai") as keyed, FakeProvider("openai") as local:
        async for llm in start_llm(
            issuer,
            sqlite_url,
            vault_target=f"127.0.0.1:{closed_port()}",
            token=token,
        ):
            await llm.client.put("keyed", keyed, priority=0, api_key_id="llm/openai")
            await llm.client.put("local", local, priority=1)
            response = await llm.client.complete()

    assert response.provider_id == "local"
    assert [(a.provider_id, a.error_class) for a in response.failed_attempts] == [
        ("keyed", pb.ERROR_CLASS_CREDENTIALS_UNAVAILABLE)
    ]
    assert keyed.completions == 0


async def test_deterministic_requests_are_served_from_the_cache_service(
    issuer: LocalIssuer, sqlite_url: str, tmp_path: object
) -> None:
    settings = cache_settings(f"sqlite:///{tmp_path}/cache.db")
    service = await create_cache_service(settings)
    async with serve(service, settings.server, issuer.verifier()) as cache:
        admin = connect("cache", cache.target, token=issuer.token(scopes=["*"]))
        await put_route(admin, route_id="llm-completions", route_pattern="/llm/*")
        await admin.close()

        def token() -> str:
            return issuer.token(scopes=["cache:use"], subject="llm")

        cache_target = cache.target
        async with FakeProvider("openai") as fake:
            async for llm in start_llm(
                issuer, sqlite_url, cache_target=cache_target, token=token
            ):
                await llm.client.put("p", fake, output_price_per_million=1_000_000)
                fresh = await llm.client.complete(temperature=0.0)
                await _settled(llm)
                cached = await llm.client.complete(temperature=0.0)
                sampled = await llm.client.complete(temperature=0.7)
                skipped = await llm.client.complete(temperature=0.0, skip_cache=True)
                streamed = await llm.client.stream("other", cacheable=True)
                await _settled(llm)
                restreamed = await llm.client.stream("other", cacheable=True)

    assert not fresh.cached and fresh.cost_usd > 0
    assert cached.cached and cached.content == fresh.content
    assert cached.provider_id == "p" and cached.cost_usd == 0
    assert not sampled.cached and not skipped.cached
    assert streamed.done is not None and not streamed.done.cached
    assert restreamed.done is not None and restreamed.done.cached
    assert restreamed.kinds() == ["start", "delta", "done"]
    assert restreamed.text() == streamed.text() == DEFAULT_REPLY
    assert fake.completions == 4


async def test_a_cache_outage_never_fails_a_completion(
    issuer: LocalIssuer, sqlite_url: str
) -> None:
    def token() -> str:
        return issuer.token(scopes=["cache:use"], subject="llm")

    async with FakeProvider("openai") as fake:
        async for llm in start_llm(
            issuer,
            sqlite_url,
            cache_target=f"127.0.0.1:{closed_port()}",
            token=token,
        ):
            await llm.client.put("p", fake)
            first = await llm.client.complete(temperature=0.0)
            second = await llm.client.complete(temperature=0.0)

    assert first.content == second.content == DEFAULT_REPLY
    assert not first.cached and not second.cached
    assert fake.completions == 2


async def _settled(llm: object) -> None:
    """Let the background cache store land."""
    runtime = llm.runtime  # type: ignore[attr-defined]
    cache = runtime.servicer._completions.cache
    if cache is not None and cache._pending:
        await asyncio.wait(cache._pending)


def _abandon_stores(llm: object) -> None:
    """Drop the background stores a stalled cache would hold until shutdown."""
    runtime = llm.runtime  # type: ignore[attr-defined]
    for task in list(runtime.servicer._completions.cache._pending):
        task.cancel()


async def test_prompts_and_keys_never_reach_the_logs(
    issuer: LocalIssuer, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    prompt = "my-secret-prompt-4711"
    environ = {"EMPIRE_LLM_PROVIDER_KEY_LLM_FAKE": "sk-key-0815"}
    async with FakeProvider("openai", api_key="sk-key-0815") as fake:
        async for llm in start_llm(issuer, sqlite_url, environ=environ):
            await llm.client.put("p", fake, api_key_id="llm/fake")
            fake.inject(faults.server_error(500), times=1)
            fake.inject(faults.auth_error(), times=1)
            with pytest.raises(grpc.aio.AioRpcError):
                await llm.client.complete(prompt)
            await llm.client.stream(prompt)

    assert fake.completions >= 2
    logged = "\n".join(
        record.getMessage() + " " + str(record.__dict__) for record in caplog.records
    )
    assert prompt not in logged
    assert "sk-key-0815" not in logged


class FlakyVault:
    """A vault stand-in that answers each GetSecret with the next outcome."""

    def __init__(self, *outcomes: bytes | grpc.StatusCode) -> None:
        self.outcomes = list(outcomes)

    async def GetSecret(self, request: object) -> vault_pb.GetSecretResponse:  # noqa: N802
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, grpc.StatusCode):
            metadata = grpc.aio.Metadata()
            raise grpc.aio.AioRpcError(outcome, metadata, metadata)
        return vault_pb.GetSecretResponse(value=outcome)


@pytest.mark.parametrize(
    "forget",
    [
        pytest.param("rejected", id="rejected-by-the-provider"),
        pytest.param(grpc.StatusCode.NOT_FOUND, id="deleted-from-the-vault"),
        pytest.param(grpc.StatusCode.PERMISSION_DENIED, id="no-longer-readable"),
    ],
)
async def test_a_key_rejected_or_withdrawn_is_not_brought_back_by_an_outage(
    forget: str | grpc.StatusCode,
) -> None:
    outage = grpc.StatusCode.UNAVAILABLE
    steps: list[bytes | grpc.StatusCode] = [b"sk-old", outage]
    if isinstance(forget, grpc.StatusCode):
        steps.append(forget)
    steps.append(outage)
    keys = ApiKeySource(environ={}, vault=FlakyVault(*steps), cache_seconds=0.0)

    assert await keys.get("llm/openai") == "sk-old"
    assert await keys.get("llm/openai") == "sk-old"  # the outage keeps it
    if isinstance(forget, grpc.StatusCode):
        with pytest.raises(ProviderFailure):
            await keys.get("llm/openai")
    else:
        keys.invalidate("llm/openai")
    with pytest.raises(ProviderFailure) as caught:
        await keys.get("llm/openai")

    assert caught.value.error_class is ErrorClass.CREDENTIALS_UNAVAILABLE


def cache_token(issuer: LocalIssuer) -> object:
    return lambda: issuer.token(scopes=["cache:use"], subject="llm")


def vault_token(issuer: LocalIssuer) -> object:
    return lambda: issuer.token(scopes=["secrets:read:llm/"], subject="llm")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(cache_token, id="stalled-cache"),
        pytest.param(None, id="stalled-auth"),
    ],
)
async def test_a_stalled_cache_leaves_the_provider_time_within_a_short_deadline(
    issuer: LocalIssuer, sqlite_url: str, token: object
) -> None:
    # The cache's own timeout (made long here) must not outlast the caller's
    # deadline, nor may the wait for the token the cache call needs.
    async with stalled_service() as cache_target, FakeProvider("openai") as fake:
        async for llm in start_llm(
            issuer,
            sqlite_url,
            cache_target=cache_target,
            token=token(issuer) if callable(token) else never_a_token,
            dependency_timeout_seconds=30.0,
        ):
            await llm.client.put("p", fake)
            response = await llm.client.complete(temperature=0.0, timeout=6.0)
            _abandon_stores(llm)

    assert response.content == DEFAULT_REPLY and not response.cached
    assert fake.completions == 1


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(vault_token, id="stalled-vault"),
        pytest.param(None, id="stalled-auth"),
    ],
)
async def test_a_stalled_key_read_fails_over_within_a_short_deadline(
    issuer: LocalIssuer, sqlite_url: str, token: object
) -> None:
    # A key read that cannot finish in time is the vault's failure, not a
    # silent provider's: it fails over while the next provider has time.
    async with (
        stalled_service() as vault_target,
        FakeProvider("openai") as keyed,
        FakeProvider("openai") as local,
    ):
        async for llm in start_llm(
            issuer,
            sqlite_url,
            vault_target=vault_target,
            token=token(issuer) if callable(token) else never_a_token,
            dependency_timeout_seconds=30.0,
        ):
            await llm.client.put(
                "keyed",
                keyed,
                priority=0,
                api_key_id="llm/openai",
                request_timeout=seconds(30),
            )
            await llm.client.put("local", local, priority=1)
            response = await llm.client.complete(timeout=6.0)

    assert response.provider_id == "local"
    assert [(a.provider_id, a.error_class) for a in response.failed_attempts] == [
        ("keyed", pb.ERROR_CLASS_CREDENTIALS_UNAVAILABLE)
    ]
    assert keyed.completions == 0


async def test_a_vault_outage_leaves_the_providers_circuits_closed(
    issuer: LocalIssuer, sqlite_url: str
) -> None:
    # No key could be read, so the provider was never asked: the outage is
    # the vault's, and must not show a healthy provider as OPEN.
    async with FakeProvider("openai") as keyed, FakeProvider("openai") as local:
        async for llm in start_llm(
            issuer,
            sqlite_url,
            vault_target=f"127.0.0.1:{closed_port()}",
            token=vault_token(issuer),
        ):
            await llm.client.put("keyed", keyed, priority=0, api_key_id="llm/openai")
            await llm.client.put("local", local, priority=1)
            tries = llm.settings.policy.breaker_consecutive_failures + 1
            responses = [await llm.client.complete() for _ in range(tries)]
            health = await llm.client.call(
                "GetProviderHealth", pb.GetProviderHealthRequest(provider_id="keyed")
            )

    assert {r.provider_id for r in responses} == {"local"}
    assert all(
        [a.error_class for a in r.failed_attempts]
        == [pb.ERROR_CLASS_CREDENTIALS_UNAVAILABLE]
        for r in responses
    )
    assert health.providers[0].state == pb.CIRCUIT_STATE_CLOSED
