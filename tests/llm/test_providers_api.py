"""The provider registry RPCs and input validation, on PostgreSQL and SQLite."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from empire.llm.v1 import llm_service_pb2 as pb
from tests.harness.fake_providers import FakeProvider
from tests.harness.grpc_errors import bad_request, error_info
from tests.harness.tokens import LocalIssuer
from tests.llm.harness import (
    FAST_POLICY,
    RunningLlm,
    eventually,
    seconds,
    start_llm,
    user,
)


@pytest.fixture
async def llm_db(issuer: LocalIssuer, database_url: str) -> AsyncIterator[RunningLlm]:
    async for running in start_llm(issuer, database_url):
        yield running


async def invalid_field(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = bad_request(caught.value).field_violations
    return violations[0].field


async def test_put_get_replace_and_delete_a_provider(llm_db: RunningLlm) -> None:
    client = llm_db.client
    created = await client.call(
        "PutProvider",
        pb.PutProviderRequest(
            provider=pb.Provider(
                provider_id="openai-main",
                kind=pb.PROVIDER_KIND_OPENAI,
                endpoint="https://api.openai.com/v1/",
                model="gpt-4o-mini",
                route="chat",
                priority=1,
                weight=3,
                api_key_id="llm/openai",
                context_window=128000,
                first_token_timeout=seconds(4),
                input_price_per_million=0.15,
                output_price_per_million=0.6,
            )
        ),
    )
    assert created.created
    stored = created.provider
    assert stored.endpoint == "https://api.openai.com/v1"
    assert stored.first_token_timeout.ToMilliseconds() == 4000
    assert stored.request_timeout.ToMilliseconds() == 60000  # the default
    assert stored.create_time.ToMilliseconds() > 0

    fetched = await client.call(
        "GetProvider", pb.GetProviderRequest(provider_id="openai-main")
    )
    assert fetched.provider == stored

    replaced = await client.put("openai-main", priority=7)
    assert replaced.priority == 7
    assert replaced.create_time == stored.create_time

    await client.call(
        "DeleteProvider", pb.DeleteProviderRequest(provider_id="openai-main")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.call(
            "GetProvider", pb.GetProviderRequest(provider_id="openai-main")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "PROVIDER_NOT_FOUND"


async def test_list_pages_through_providers_of_a_route(llm_db: RunningLlm) -> None:
    for index in range(5):
        await llm_db.client.put(f"p{index}", route="chat", priority=4 - index)
    await llm_db.client.put("other", route="embed")

    seen: list[str] = []
    token = ""
    while True:
        page = await llm_db.client.call(
            "ListProviders",
            pb.ListProvidersRequest(route="chat", page_size=2, page_token=token),
        )
        seen += [p.provider_id for p in page.providers]
        token = page.next_page_token
        if not token:
            break

    assert seen == ["p4", "p3", "p2", "p1", "p0"]  # by priority
    everything = await llm_db.client.call("ListProviders", pb.ListProvidersRequest())
    assert len(everything.providers) == 6


async def test_list_refuses_a_token_from_another_filter(llm_db: RunningLlm) -> None:
    for index in range(3):
        await llm_db.client.put(f"p{index}")
    page = await llm_db.client.call(
        "ListProviders", pb.ListProvidersRequest(route="chat", page_size=1)
    )
    request = pb.ListProvidersRequest(route="other", page_token=page.next_page_token)
    assert (
        await invalid_field(llm_db.client.call("ListProviders", request))
        == "page_token"
    )


@pytest.mark.parametrize(
    "fields, field",
    [
        pytest.param({"provider_id": "Bad Id"}, "provider.provider_id", id="id"),
        pytest.param({"route": ""}, "provider.route", id="route"),
        pytest.param(
            {"kind": pb.PROVIDER_KIND_UNSPECIFIED}, "provider.kind", id="kind"
        ),
        pytest.param(
            {"endpoint": "ftp://x"}, "provider.endpoint", id="endpoint-scheme"
        ),
        pytest.param(
            {"endpoint": "https://user:secret@host/v1"},
            "provider.endpoint",
            id="endpoint-credentials",
        ),
        pytest.param({"model": ""}, "provider.model", id="model"),
        pytest.param({"priority": -1}, "provider.priority", id="priority"),
        pytest.param({"weight": -2}, "provider.weight", id="weight"),
        pytest.param({"api_key_id": "../x y"}, "provider.api_key_id", id="key-id"),
        pytest.param({"context_window": -5}, "provider.context_window", id="window"),
        pytest.param(
            {"stream_idle_timeout": seconds(-1)},
            "provider.stream_idle_timeout",
            id="timeout",
        ),
        pytest.param(
            {"input_price_per_million": float("nan")},
            "provider.input_price_per_million",
            id="price",
        ),
    ],
)
async def test_put_provider_names_the_bad_field(
    llm: RunningLlm, fields: dict[str, Any], field: str
) -> None:
    provider = pb.Provider(
        provider_id="p",
        kind=pb.PROVIDER_KIND_OPENAI,
        endpoint="https://api.example.com/v1",
        model="m",
        route="chat",
    )
    for name, value in fields.items():
        if isinstance(value, pb.Provider) or hasattr(value, "CopyFrom"):
            getattr(provider, name).CopyFrom(value)
        else:
            setattr(provider, name, value)
    call = llm.client.call("PutProvider", pb.PutProviderRequest(provider=provider))
    assert await invalid_field(call) == field


async def test_endpoint_credentials_are_not_echoed_in_the_error(
    llm: RunningLlm,
) -> None:
    provider = pb.Provider(
        provider_id="p",
        kind=pb.PROVIDER_KIND_OPENAI,
        endpoint="https://user:sk-very-secret@host/v1",
        model="m",
        route="chat",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.client.call("PutProvider", pb.PutProviderRequest(provider=provider))
    assert "sk-very-secret" not in str(caught.value.details())
    assert "sk-very-secret" not in str(caught.value.trailing_metadata())


@pytest.mark.parametrize(
    "request_fields, field",
    [
        pytest.param({"messages": []}, "messages", id="empty-messages"),
        pytest.param({"route": "nowhere"}, "route", id="unknown-route"),
        pytest.param({"max_tokens": -1}, "max_tokens", id="negative-max-tokens"),
        pytest.param({"temperature": 2.5}, "temperature", id="temperature"),
        pytest.param(
            {"messages": [pb.Message(role=pb.ROLE_USER, content="x" * 200_001)]},
            "messages",
            id="oversized-prompt",
        ),
        pytest.param(
            {"messages": [pb.Message(role=pb.ROLE_USER, content="  ")]},
            "messages[0].content",
            id="blank-content",
        ),
        pytest.param(
            {"messages": [user("hi"), pb.Message(content="no role")]},
            "messages[1].role",
            id="no-role",
        ),
        pytest.param(
            {"messages": [pb.Message(role=pb.ROLE_SYSTEM, content="only system")]},
            "messages",
            id="only-system",
        ),
        pytest.param({"stop": ["a", "b", "c", "d", "e"]}, "stop", id="too-many-stops"),
    ],
)
@pytest.mark.parametrize("method", ["Complete", "StreamComplete"])
async def test_bad_completion_input_names_the_field(
    issuer: LocalIssuer,
    sqlite_url: str,
    request_fields: dict[str, Any],
    field: str,
    method: str,
) -> None:
    policy = dataclasses.replace(FAST_POLICY, max_prompt_chars=200_000)
    async for running in start_llm(issuer, sqlite_url, policy=policy):
        await running.client.put("p", route="chat")
        fields: dict[str, Any] = {"route": "chat", "messages": [user("hi")]}
        fields.update(request_fields)
        if method == "Complete":
            call = running.client.call("Complete", pb.CompleteRequest(**fields))
            assert await invalid_field(call) == field
        else:
            result = await running.client.stream(**fields)
            assert result.error is not None
            assert result.error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert bad_request(result.error).field_violations[0].field == field


@pytest.mark.parametrize(
    "method, message, scope",
    [
        ("PutProvider", pb.PutProviderRequest(), "llm:admin"),
        ("DeleteProvider", pb.DeleteProviderRequest(provider_id="p"), "llm:admin"),
        ("GetProvider", pb.GetProviderRequest(provider_id="p"), "llm:read"),
        ("GetUsage", pb.GetUsageRequest(), "llm:read"),
        ("Complete", pb.CompleteRequest(route="chat"), "llm:complete"),
    ],
)
async def test_each_rpc_requires_its_scope(
    llm: RunningLlm, method: str, message: Any, scope: str
) -> None:
    others = [s for s in ("llm:admin", "llm:complete", "llm:read") if s != scope]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.client.call(method, message, scopes=others)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.postgres
async def test_a_second_replica_picks_up_provider_edits(
    issuer: LocalIssuer, postgres_url: str
) -> None:
    async with FakeProvider("openai") as fake:
        async for first in start_llm(issuer, postgres_url):
            async for second in start_llm(
                issuer, postgres_url, registry_refresh_seconds=0.2
            ):
                await first.client.put("p", fake, route="shared")
                served = await eventually(
                    lambda second=second: second.runtime.registry.serves("shared")
                )
                response = await second.client.complete(route="shared")
                await first.client.call(
                    "DeleteProvider", pb.DeleteProviderRequest(provider_id="p")
                )
                gone = await eventually(
                    lambda second=second: not second.runtime.registry.serves("shared")
                )

    assert served and gone
    assert response.provider_id == "p"


@pytest.mark.parametrize(
    "fields, field",
    [
        pytest.param(
            {"endpoint": "http://[::1/v1"}, "provider.endpoint", id="unparsable-url"
        ),
        pytest.param(
            {"endpoint": "http://127.0.0.1:99999/v1"},
            "provider.endpoint",
            id="port-out-of-range",
        ),
        pytest.param(
            {"endpoint": "http://127.0.0.1:0/v1"}, "provider.endpoint", id="port-zero"
        ),
        pytest.param(
            {"endpoint": "http://127.0.0.1:x/v1"}, "provider.endpoint", id="port-text"
        ),
        pytest.param(
            {"endpoint": "http://127.0.0.1/v1\x00"}, "provider.endpoint", id="url-nul"
        ),
        pytest.param(
            {"endpoint": "http://127.0.0.1/v\n1"}, "provider.endpoint", id="url-newline"
        ),
        pytest.param({"model": "gpt\x00mini"}, "provider.model", id="model-nul"),
        pytest.param({"model": "gpt\x1b[2J"}, "provider.model", id="model-escape"),
        pytest.param({"provider_id": "p\n"}, "provider.provider_id", id="id-newline"),
        pytest.param({"route": "chat\n"}, "provider.route", id="route-newline"),
        pytest.param(
            {"api_key_id": "llm/openai\n"}, "provider.api_key_id", id="key-id-newline"
        ),
    ],
)
async def test_put_provider_refuses_what_the_store_or_the_sdks_cannot_take(
    llm_db: RunningLlm, fields: dict[str, Any], field: str
) -> None:
    values: dict[str, Any] = {
        "provider_id": "p",
        "kind": pb.PROVIDER_KIND_OPENAI,
        "endpoint": "https://api.example.com/v1",
        "model": "m",
        "route": "chat",
    }
    provider = pb.Provider(**(values | fields))
    call = llm_db.client.call("PutProvider", pb.PutProviderRequest(provider=provider))

    # Not INTERNAL from the URL parser or the database driver.
    assert await invalid_field(call) == field
    listed = await llm_db.client.call("ListProviders", pb.ListProvidersRequest())
    assert not listed.providers


async def test_weight_unset_is_one_and_an_explicit_zero_is_refused(
    llm: RunningLlm,
) -> None:
    unset = await llm.client.put("unset")
    heavy = await llm.client.put("heavy", weight=1000)

    zero = llm.client.put("drained", weight=0)

    assert (unset.weight, heavy.weight) == (1, 1000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await zero
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(caught.value).field_violations[0].field == "provider.weight"
    assert "disabled" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError):
        await llm.client.call(
            "GetProvider", pb.GetProviderRequest(provider_id="drained")
        )
