"""Usage and health as callers read them: requests, failures by class, cost."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from empire.llm.v1 import llm_service_pb2 as pb
from services.llm.store import ROWS_PER_STATEMENT, AttemptRecord, open_store
from services.llm.usage import summarize
from tests.harness import fake_providers as faults
from tests.harness.fake_providers import FakeProvider
from tests.harness.grpc_errors import bad_request
from tests.harness.tokens import LocalIssuer
from tests.llm.harness import RunningLlm, start_llm


@pytest.fixture
async def llm_db(issuer: LocalIssuer, database_url: str) -> AsyncIterator[RunningLlm]:
    async for running in start_llm(issuer, database_url):
        yield running


async def test_usage_counts_requests_failures_tokens_and_cost(
    llm_db: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    client = llm_db.client
    await client.put(
        "primary",
        openai_primary,
        priority=0,
        input_price_per_million=1_000_000,
        output_price_per_million=1_000_000,
    )
    await client.put(
        "fallback",
        openai_fallback,
        priority=1,
        input_price_per_million=2_000_000,
        output_price_per_million=2_000_000,
    )
    await client.complete("a b")  # primary: 2 in, 9 out, $11
    openai_primary.inject(faults.server_error(503), times=2)
    await client.complete("a b")  # primary fails twice, fallback: $22
    # Another model may accept what one refused; here both refuse.
    openai_primary.inject(faults.content_policy(), times=1)
    openai_fallback.inject(faults.content_policy(), times=1)
    with pytest.raises(grpc.aio.AioRpcError):
        await client.complete("a b")

    usage = await client.call("GetUsage", pb.GetUsageRequest(route="chat"))

    (route,) = usage.routes
    assert (route.requests, route.succeeded, route.failed) == (3, 2, 1)
    assert (route.input_tokens, route.output_tokens) == (4, 18)
    assert route.cost_usd == pytest.approx(33.0)
    assert route.latency_p50.ToNanoseconds() > 0
    # Per route too, by class: the failovers the callers never saw included.
    assert {f.error_class: f.count for f in route.attempt_failures} == {
        pb.ERROR_CLASS_SERVER_ERROR: 2,
        pb.ERROR_CLASS_CONTENT_POLICY: 2,
    }
    by_id = {p.provider_id: p for p in usage.providers}
    primary, fallback = by_id["primary"], by_id["fallback"]
    assert (primary.attempts, primary.successes) == (4, 1)
    assert {f.error_class: f.count for f in primary.failures} == {
        pb.ERROR_CLASS_SERVER_ERROR: 2,
        pb.ERROR_CLASS_CONTENT_POLICY: 1,
    }
    # Failed attempts are never billed.
    assert primary.cost_usd == pytest.approx(11.0)
    assert (primary.input_tokens, primary.output_tokens) == (2, 9)
    assert (fallback.attempts, fallback.successes) == (2, 1)
    assert fallback.cost_usd == pytest.approx(22.0)


async def test_usage_filters_by_provider_and_time_window(
    llm_db: RunningLlm, openai_primary: FakeProvider
) -> None:
    await llm_db.client.put("primary", openai_primary)
    await llm_db.client.complete()

    mine = await llm_db.client.call(
        "GetUsage", pb.GetUsageRequest(provider_id="primary")
    )
    nobody = await llm_db.client.call(
        "GetUsage", pb.GetUsageRequest(provider_id="other")
    )
    request = pb.GetUsageRequest()
    request.start_time.FromSeconds(4_000_000_000)
    future = await llm_db.client.call("GetUsage", request)

    assert [p.attempts for p in mine.providers] == [1]
    assert not nobody.providers and not nobody.routes
    assert not future.providers and not future.routes


async def test_route_failures_by_class_follow_the_filters(
    llm_db: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    client = llm_db.client
    await client.put("primary", openai_primary, priority=0)
    await client.put("fallback", openai_fallback, priority=1)
    await client.put("other", openai_fallback, route="embed")
    openai_primary.inject(faults.rate_limited(), times=1)
    openai_fallback.inject(faults.server_error(502), times=1)
    await client.complete()  # primary 429, fallback 502 then serves
    openai_fallback.inject(faults.server_error(500), times=1)
    await client.complete(route="embed")  # other 500 then serves

    everything = await client.call("GetUsage", pb.GetUsageRequest())
    fallback_only = await client.call(
        "GetUsage", pb.GetUsageRequest(provider_id="fallback")
    )

    by_route = {
        r.route: {f.error_class: f.count for f in r.attempt_failures}
        for r in everything.routes
    }
    assert by_route == {
        "chat": {pb.ERROR_CLASS_RATE_LIMITED: 1, pb.ERROR_CLASS_SERVER_ERROR: 1},
        "embed": {pb.ERROR_CLASS_SERVER_ERROR: 1},
    }
    (chat,) = fallback_only.routes
    assert chat.route == "chat" and chat.requests == 1
    assert {f.error_class: f.count for f in chat.attempt_failures} == {
        pb.ERROR_CLASS_SERVER_ERROR: 1
    }


async def test_usage_window_must_not_end_before_it_starts(llm: RunningLlm) -> None:
    request = pb.GetUsageRequest()
    request.start_time.FromSeconds(2000)
    request.end_time.FromSeconds(1000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.client.call("GetUsage", request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "field, seconds, nanos",
    [
        pytest.param("start_time", 10**15, 0, id="start-after-year-9999"),
        pytest.param("start_time", 1000, -1, id="start-negative-nanos"),
        pytest.param("end_time", -(10**12), 0, id="end-before-year-1"),
        pytest.param("end_time", 1000, 10**9, id="end-nanos-overflow"),
    ],
)
async def test_usage_window_out_of_the_timestamp_range_names_the_field(
    llm: RunningLlm, field: str, seconds: int, nanos: int
) -> None:
    request = pb.GetUsageRequest()
    getattr(request, field).seconds = seconds
    getattr(request, field).nanos = nanos

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.client.call("GetUsage", request)

    # Not INTERNAL from the timestamp conversion.
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(caught.value).field_violations[0].field == field


async def test_health_reports_error_rate_latency_and_last_error(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.server_error(502), times=1)
    await llm.client.complete()
    await llm.client.complete()

    health = await llm.client.call("GetProviderHealth", pb.GetProviderHealthRequest())

    by_id = {p.provider_id: p for p in health.providers}
    primary = by_id["primary"]
    assert primary.state == pb.CIRCUIT_STATE_CLOSED
    assert primary.recent_attempts == 3
    assert primary.error_rate == pytest.approx(1 / 3)
    assert primary.consecutive_failures == 0
    assert primary.last_error_class == pb.ERROR_CLASS_SERVER_ERROR
    assert "502" in primary.last_error
    assert primary.latency_p50.ToNanoseconds() > 0
    assert primary.latency_p99.ToNanoseconds() >= primary.latency_p50.ToNanoseconds()
    assert by_id["fallback"].recent_attempts == 0


async def test_health_of_an_unknown_provider_is_not_found(llm: RunningLlm) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.client.call(
            "GetProviderHealth", pb.GetProviderHealthRequest(provider_id="ghost")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_usage_rows_are_written_in_batches_past_one_statement(
    database_url: str,
) -> None:
    store = await open_store(database_url)
    try:
        attempts = [
            AttemptRecord(
                request_id=f"r{i}",
                attempt=1,
                route="chat",
                provider_id="p",
                model="m",
                time_ms=1000 + i,
                latency_ms=float(i % 100),
                ok=i % 4 != 0,
                error_class="" if i % 4 else "TIMEOUT",
                http_status=0,
                input_tokens=1,
                output_tokens=2,
                cost_usd=0.0,
            )
            for i in range(ROWS_PER_STATEMENT * 2 + 7)
        ]
        await store.record([], attempts)
        await store.record([], attempts[:10])  # replays are ignored

        summary = await summarize(store, start_ms=0, end_ms=10_000_000)
    finally:
        await store.close()

    (provider,) = summary.providers
    assert provider.attempts == len(attempts)
    assert provider.failures == {"TIMEOUT": len(attempts[::4])}
