"""Complete under provider faults: what the caller got, what each provider saw,
and how long it took (bounds far from real timings, never performance)."""

from __future__ import annotations

import dataclasses
import logging

import grpc
import pytest

from empire.llm.v1 import llm_service_pb2 as pb
from services.llm.models import ProviderConfig
from services.llm.store import open_store
from tests.harness import fake_providers as faults
from tests.harness.fake_providers import DEFAULT_REPLY, FakeProvider, Flavor
from tests.harness.grpc_errors import error_info
from tests.harness.tokens import LocalIssuer
from tests.llm.harness import (
    FAST_POLICY,
    REQUEST_TIMEOUT,
    RunningLlm,
    Stopwatch,
    eventually,
    seconds,
    start_llm,
)

# A fault answered at once, retried after a backoff of at most 50 ms or failed
# over, ends long before any attempt could have waited out its 2 s timeout.
NO_TIMEOUT_WAITED = REQUEST_TIMEOUT


def classes(response: pb.CompleteResponse) -> list[tuple[str, int]]:
    return [(a.provider_id, a.error_class) for a in response.failed_attempts]


async def test_healthy_primary_serves_and_names_itself(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put(
        "primary",
        openai_primary,
        priority=0,
        input_price_per_million=1000000,
        output_price_per_million=2000000,
    )
    await llm.client.put("fallback", openai_fallback, priority=1)

    response = await llm.client.complete("say the fox line")

    assert response.content == DEFAULT_REPLY
    assert response.provider_id == "primary"
    assert response.model == "primary-model"
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert response.usage.input_tokens == 4
    assert response.usage.output_tokens == 9
    assert response.cost_usd == pytest.approx(4 * 1.0 + 9 * 2.0)
    assert not response.failed_attempts
    assert not response.cached
    assert (openai_primary.completions, openai_fallback.completions) == (1, 0)


async def test_server_error_once_is_retried_on_the_same_provider(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.server_error(500), times=1)

    watch = Stopwatch()
    response = await llm.client.complete()

    assert response.content == DEFAULT_REPLY
    assert response.provider_id == "primary"
    assert classes(response) == [("primary", pb.ERROR_CLASS_SERVER_ERROR)]
    assert response.failed_attempts[0].http_status == 500
    assert (openai_primary.completions, openai_fallback.completions) == (2, 0)
    assert watch.seconds < NO_TIMEOUT_WAITED


async def test_persistent_503_retries_then_fails_over(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.server_error(503), times=None)

    watch = Stopwatch()
    response = await llm.client.complete()

    assert response.content == DEFAULT_REPLY
    assert response.provider_id == "fallback"
    assert classes(response) == [
        ("primary", pb.ERROR_CLASS_SERVER_ERROR),
        ("primary", pb.ERROR_CLASS_SERVER_ERROR),
    ]
    assert (openai_primary.completions, openai_fallback.completions) == (2, 1)
    assert watch.seconds < NO_TIMEOUT_WAITED


async def test_persistent_503_on_every_provider_is_a_clean_unavailable(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.server_error(503), times=None)
    openai_fallback.inject(faults.server_error(503), times=None)

    watch = Stopwatch()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.client.complete()

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(caught.value)
    assert info.reason == "ALL_PROVIDERS_FAILED"
    assert info.metadata["attempts"] == (
        "primary:SERVER_ERROR,primary:SERVER_ERROR,"
        "fallback:SERVER_ERROR,fallback:SERVER_ERROR"
    )
    assert (openai_primary.completions, openai_fallback.completions) == (2, 2)
    assert watch.seconds < NO_TIMEOUT_WAITED


async def test_retry_budget_bounds_the_attempts_of_one_request(
    llm: RunningLlm,
) -> None:
    fakes = [await FakeProvider("openai").start() for _ in range(4)]
    try:
        for index, fake in enumerate(fakes):
            fake.inject(faults.server_error(500), times=None)
            await llm.client.put(f"p{index}", fake, priority=index)

        watch = Stopwatch()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.client.complete()

        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry budget" in (caught.value.details() or "")
        assert sum(f.completions for f in fakes) == llm.settings.policy.max_attempts
        assert [f.completions for f in fakes] == [2, 2, 1, 0]
        assert watch.seconds < NO_TIMEOUT_WAITED
    finally:
        for fake in fakes:
            await fake.close()


async def test_rate_limit_with_retry_after_waits_when_no_other_provider(
    llm: RunningLlm, openai_primary: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary)
    openai_primary.inject(faults.rate_limited(retry_after=1), times=1)

    watch = Stopwatch()
    response = await llm.client.complete(timeout=20)

    assert response.content == DEFAULT_REPLY
    assert classes(response) == [("primary", pb.ERROR_CLASS_RATE_LIMITED)]
    assert response.failed_attempts[0].http_status == 429
    gap = openai_primary.requests[1].at - openai_primary.requests[0].at
    # The second try came no earlier than the provider asked, and the wait was
    # the one asked for, not the caller's whole deadline.
    assert gap >= 1.0
    assert watch.seconds < 1.0 + NO_TIMEOUT_WAITED
    assert openai_primary.completions == 2


@pytest.mark.parametrize(
    "retry_after",
    [
        pytest.param(4, id="fits-the-deadline"),
        pytest.param(30, id="beyond-the-deadline"),
    ],
)
async def test_rate_limit_with_retry_after_fails_over_to_a_ready_provider(
    llm: RunningLlm,
    openai_primary: FakeProvider,
    openai_fallback: FakeProvider,
    retry_after: float,
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.rate_limited(retry_after=retry_after), times=1)

    watch = Stopwatch()
    response = await llm.client.complete(timeout=10)

    assert response.provider_id == "fallback"
    assert classes(response) == [("primary", pb.ERROR_CLASS_RATE_LIMITED)]
    assert (openai_primary.completions, openai_fallback.completions) == (1, 1)
    # A ready provider is used at once: nothing waited for the Retry-After.
    assert watch.seconds < min(retry_after, NO_TIMEOUT_WAITED)


async def test_a_retry_after_holds_back_the_following_requests_too(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    # Far longer than the two requests take on a loaded machine.
    openai_primary.inject(faults.rate_limited(retry_after=4), times=1)

    first = await llm.client.complete(timeout=10)
    second = await llm.client.complete(timeout=10)

    assert first.provider_id == second.provider_id == "fallback"
    assert classes(first) == [("primary", pb.ERROR_CLASS_RATE_LIMITED)]
    # The provider asked for quiet: the next request went straight elsewhere.
    assert not second.failed_attempts
    assert (openai_primary.completions, openai_fallback.completions) == (1, 2)


async def test_a_retry_after_beyond_a_new_requests_deadline_fails_it_fast(
    llm: RunningLlm, openai_primary: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary)
    await llm.client.complete()  # the client is made and warm
    retry_after = 4.0  # far longer than the next two requests take
    openai_primary.inject(faults.rate_limited(retry_after=retry_after), times=1)

    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await llm.client.complete(timeout=1.5)
    with pytest.raises(grpc.aio.AioRpcError) as held_back:
        await llm.client.complete(timeout=1.5)
    seen = openai_primary.completions
    patient = await llm.client.complete(timeout=15)

    assert error_info(limited.value).metadata["attempts"] == "primary:RATE_LIMITED"
    assert held_back.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(held_back.value).reason == "RATE_LIMITED"
    assert seen == 2  # the second request never reached the provider
    assert patient.content == DEFAULT_REPLY and not patient.failed_attempts
    gap = openai_primary.requests[2].at - openai_primary.requests[1].at
    assert gap >= retry_after


async def test_rate_limit_whose_retry_after_exceeds_the_deadline_fails_fast(
    issuer: LocalIssuer, sqlite_url: str, openai_primary: FakeProvider
) -> None:
    # The wait is allowed by the policy, so only the deadline rules it out.
    policy = dataclasses.replace(FAST_POLICY, max_retry_after_seconds=60)
    async for llm in start_llm(issuer, sqlite_url, policy=policy):
        await llm.client.put("primary", openai_primary)
        openai_primary.inject(faults.rate_limited(retry_after=30), times=1)

        watch = Stopwatch()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.client.complete(timeout=10)
        took = watch.seconds

    # Not DEADLINE_EXCEEDED: the service gave up at once instead of sleeping.
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).metadata["attempts"] == "primary:RATE_LIMITED"
    assert openai_primary.completions == 1
    assert took < NO_TIMEOUT_WAITED  # far under the 10 s deadline and the 30 s


async def test_rate_limit_without_retry_after_fails_over(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.rate_limited(), times=None)

    watch = Stopwatch()
    response = await llm.client.complete()

    assert response.provider_id == "fallback"
    assert classes(response) == [("primary", pb.ERROR_CLASS_RATE_LIMITED)]
    assert (openai_primary.completions, openai_fallback.completions) == (1, 1)
    assert watch.seconds < NO_TIMEOUT_WAITED


async def test_tcp_reset_before_headers_is_retried_then_failed_over(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.reset_before_headers(), times=None)

    watch = Stopwatch()
    response = await llm.client.complete()

    assert response.content == DEFAULT_REPLY
    assert response.provider_id == "fallback"
    assert classes(response) == [
        ("primary", pb.ERROR_CLASS_CONNECTION),
        ("primary", pb.ERROR_CLASS_CONNECTION),
    ]
    assert (openai_primary.completions, openai_fallback.completions) == (2, 1)
    assert watch.seconds < NO_TIMEOUT_WAITED


async def test_a_stored_endpoint_the_http_client_cannot_use_fails_over(
    llm: RunningLlm, sqlite_url: str, openai_fallback: FakeProvider
) -> None:
    # Written before PutProvider refused such URLs (a port out of range).
    store = await open_store(sqlite_url)
    try:
        await store.put_provider(
            ProviderConfig(
                provider_id="broken",
                kind="openai",
                endpoint="http://127.0.0.1:99999/v1",
                model="m",
                route="chat",
                request_timeout_seconds=REQUEST_TIMEOUT,
            )
        )
    finally:
        await store.close()
    await llm.runtime.registry.load()
    await llm.client.put("fallback", openai_fallback, priority=1)

    watch = Stopwatch()
    response = await llm.client.complete()

    # Not INTERNAL: the provider's configuration is at fault, not the service.
    assert response.provider_id == "fallback"
    assert response.content == DEFAULT_REPLY
    assert classes(response) == [
        ("broken", pb.ERROR_CLASS_CONNECTION),
        ("broken", pb.ERROR_CLASS_CONNECTION),
    ]
    assert openai_fallback.completions == 1
    assert watch.seconds < NO_TIMEOUT_WAITED


async def test_silent_provider_times_out_and_is_not_retried(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.no_answer(), times=None)

    watch = Stopwatch()
    response = await llm.client.complete(timeout=30)
    took = watch.seconds

    assert response.provider_id == "fallback"
    assert classes(response) == [("primary", pb.ERROR_CLASS_TIMEOUT)]
    # The provider's request timeout (2s) ended the attempt, not the SDK.
    assert response.failed_attempts[0].message == "the provider did not answer in time"
    assert response.failed_attempts[0].latency.ToMilliseconds() >= 1900
    assert (openai_primary.completions, openai_fallback.completions) == (1, 1)
    assert await eventually(lambda: openai_primary.abandoned == 1)
    # It waited out the 2 s timeout once, and never the caller's 30 s.
    assert REQUEST_TIMEOUT - 0.1 <= took < 10


async def test_caller_deadline_ends_the_attempt_on_a_silent_provider(
    llm: RunningLlm, openai_primary: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, request_timeout=seconds(60))
    openai_primary.inject(faults.no_answer(), times=None)

    watch = Stopwatch()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.client.complete(timeout=0.8)
    took = watch.seconds

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert openai_primary.completions == 1
    assert took < 10  # the caller's 0.8 s, far from the provider's 60 s
    # No attempt outlives its caller: the provider saw the request abandoned.
    assert await eventually(lambda: openai_primary.abandoned == 1)


async def test_context_length_goes_to_a_larger_window_never_the_same_model(
    llm: RunningLlm,
) -> None:
    small = await FakeProvider("openai", model="small", context_window=5).start()
    twin = await FakeProvider("openai", model="small", context_window=5).start()
    large = await FakeProvider("anthropic", model="large").start()
    try:
        await llm.client.put("small", small, priority=0, context_window=5)
        await llm.client.put("small-twin", twin, priority=1, context_window=5)
        await llm.client.put("large", large, priority=2, context_window=100_000)

        watch = Stopwatch()
        response = await llm.client.complete("one two three four five six seven")

        assert response.provider_id == "large"
        assert classes(response) == [("small", pb.ERROR_CLASS_CONTEXT_LENGTH_EXCEEDED)]
        assert "maximum context length" in response.failed_attempts[0].message
        assert (small.completions, twin.completions, large.completions) == (1, 0, 1)
        assert watch.seconds < NO_TIMEOUT_WAITED
    finally:
        for fake in (small, twin, large):
            await fake.close()


async def test_context_length_with_no_larger_window_names_the_messages(
    llm: RunningLlm, openai_primary: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary)
    openai_primary.inject(faults.context_length(), times=None)

    watch = Stopwatch()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.client.complete()

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert info.metadata["field"] == "messages"
    assert openai_primary.completions == 1
    assert watch.seconds < NO_TIMEOUT_WAITED


@pytest.mark.parametrize(
    "large_window",
    [pytest.param(100_000, id="a-larger-window"), pytest.param(None, id="none")],
)
async def test_context_length_skips_providers_whose_window_is_unknown(
    llm: RunningLlm, large_window: int | None
) -> None:
    # The unknown window may well be smaller (a local server's), and some such
    # servers cut an overlong prompt instead of refusing it.
    small = await FakeProvider("openai", model="small", context_window=5).start()
    unknown = await FakeProvider("openai", model="unknown").start()
    large = await FakeProvider("anthropic", model="large").start()
    try:
        await llm.client.put("small", small, priority=0, context_window=5)
        await llm.client.put("unknown", unknown, priority=1)
        if large_window is not None:
            await llm.client.put("large", large, priority=2, context_window=100_000)

        outcome: pb.CompleteResponse | grpc.aio.AioRpcError
        try:
            outcome = await llm.client.complete("one two three four five six seven")
        except grpc.aio.AioRpcError as error:
            outcome = error

        assert unknown.completions == 0
        if large_window is None:
            assert isinstance(outcome, grpc.aio.AioRpcError)
            assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(outcome).reason == "CONTEXT_LENGTH_EXCEEDED"
        else:
            assert isinstance(outcome, pb.CompleteResponse)
            assert outcome.provider_id == "large"
        assert small.completions == 1
    finally:
        for fake in (small, unknown, large):
            await fake.close()


async def test_prompt_surely_beyond_every_window_is_refused_without_a_call(
    llm: RunningLlm, openai_primary: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, context_window=10)

    watch = Stopwatch()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.client.complete("word " * 100)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "CONTEXT_LENGTH_EXCEEDED"
    assert openai_primary.completions == 0
    assert watch.seconds < NO_TIMEOUT_WAITED


async def test_content_policy_is_not_retried_and_carries_the_providers_reason(
    llm: RunningLlm, openai_primary: FakeProvider
) -> None:
    same_model = await FakeProvider("openai", model="primary-model").start()
    try:
        await llm.client.put("primary", openai_primary, priority=0)
        await llm.client.put("same-model", same_model, priority=1)
        openai_primary.inject(faults.content_policy(), times=None)

        watch = Stopwatch()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.client.complete()

        assert watch.seconds < NO_TIMEOUT_WAITED
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(caught.value)
        assert info.reason == "CONTENT_POLICY"
        assert "safety system" in info.metadata["provider_reason"]
        assert "safety system" in (caught.value.details() or "")
        assert (openai_primary.completions, same_model.completions) == (1, 0)
    finally:
        await same_model.close()


@pytest.mark.parametrize("flavor", ["openai", "anthropic"])
async def test_a_refusal_quoting_the_prompt_reaches_no_one_with_the_prompt(
    llm: RunningLlm, flavor: Flavor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    prompt = "Describe how the violet heron nests beside reservoir-0815"
    async with FakeProvider(flavor, model="primary-model") as refusing:
        await llm.client.put("primary", refusing, priority=0)
        refusing.inject(faults.content_policy(quote_prompt=True), times=None)

        watch = Stopwatch()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.client.complete(prompt)
        assert watch.seconds < NO_TIMEOUT_WAITED
        health = await llm.client.call(
            "GetProviderHealth", pb.GetProviderHealthRequest(provider_id="primary")
        )

    assert refusing.completions == 1
    info = error_info(caught.value)
    assert info.reason == "CONTENT_POLICY"
    told = [
        caught.value.details() or "",
        info.metadata["provider_reason"],
        health.providers[0].last_error,
        "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records),
    ]
    for text in told:
        assert "heron" not in text and "reservoir" not in text
    # The provider's own words still say why.
    assert "[prompt text]" in info.metadata["provider_reason"]
    assert "Flagged input" in info.metadata["provider_reason"]


async def test_a_refusal_cut_short_never_keeps_part_of_a_quoted_prompt_word(
    llm: RunningLlm, openai_primary: FakeProvider
) -> None:
    # A long quote is cut to the reason's length limit. Wherever the cut falls
    # (the filler moves the key across it), the key half-quoted at the cut
    # must go too: a prefix of it no longer matches the prompt's words.
    key = "Zq7Xw9Lm2Pv5Rt8Ny4Kb6Hd3"
    await llm.client.put("primary", openai_primary)
    openai_primary.inject(faults.content_policy(quote_prompt=True), times=None)

    told: list[str] = []
    for filler in range(12, 32):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.client.complete(" ".join(["nest"] * filler + [key]))
        info = error_info(caught.value)
        assert info.reason == "CONTENT_POLICY"
        told += [caught.value.details() or "", info.metadata["provider_reason"]]
    health = await llm.client.call(
        "GetProviderHealth", pb.GetProviderHealthRequest(provider_id="primary")
    )
    told.append(health.providers[0].last_error)

    assert any(text.endswith("…") for text in told)  # some reasons were cut
    pieces = {key[i : i + 5] for i in range(len(key) - 4)}
    leaked = [text for text in told if any(piece in text for piece in pieces)]
    assert leaked == []


async def test_authentication_error_opens_the_circuit_and_fails_over(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.auth_error(), times=None)

    watch = Stopwatch()
    first = await llm.client.complete()
    second = await llm.client.complete()

    assert watch.seconds < NO_TIMEOUT_WAITED
    assert first.provider_id == second.provider_id == "fallback"
    assert classes(first) == [("primary", pb.ERROR_CLASS_AUTHENTICATION)]
    assert not second.failed_attempts  # the open circuit skips the primary
    assert (openai_primary.completions, openai_fallback.completions) == (1, 2)
    health = await llm.client.call(
        "GetProviderHealth", pb.GetProviderHealthRequest(provider_id="primary")
    )
    assert health.providers[0].state == pb.CIRCUIT_STATE_OPEN
    assert health.providers[0].last_error_class == pb.ERROR_CLASS_AUTHENTICATION
    assert "key" in health.providers[0].last_error


async def test_malformed_json_answer_fails_over(
    llm: RunningLlm, openai_primary: FakeProvider, anthropic_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", anthropic_fallback, priority=1)
    openai_primary.inject(faults.invalid_json_mid_stream(), times=None)

    watch = Stopwatch()
    response = await llm.client.complete()

    assert response.content == DEFAULT_REPLY
    assert response.provider_id == "fallback"
    assert classes(response) == [("primary", pb.ERROR_CLASS_MALFORMED_RESPONSE)]
    assert (openai_primary.completions, anthropic_fallback.completions) == (1, 1)
    assert watch.seconds < NO_TIMEOUT_WAITED


# Valid JSON of the wrong shape. The SDKs build their response models without
# validating them, so a wrong type shows only when a field is read.
WRONG_ANSWERS = [
    pytest.param(
        "openai",
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": 5},
                    "finish_reason": "stop",
                }
            ]
        },
        id="openai-number-as-text",
    ),
    pytest.param("openai", [1, 2], id="openai-list"),
    pytest.param(
        "openai",
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": -3, "completion_tokens": 1},
        },
        id="openai-negative-tokens",
    ),
    pytest.param(
        "anthropic",
        {"content": 5, "usage": {"input_tokens": 1, "output_tokens": 1}},
        id="anthropic-number-as-content",
    ),
    pytest.param(
        "anthropic",
        {
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1e30},
        },
        id="anthropic-tokens-out-of-range",
    ),
]


@pytest.mark.parametrize("flavor, payload", WRONG_ANSWERS)
async def test_an_answer_of_the_wrong_shape_fails_over_and_bills_nothing(
    llm: RunningLlm, openai_fallback: FakeProvider, flavor: Flavor, payload: object
) -> None:
    async with FakeProvider(flavor, model="primary-model") as primary:
        await llm.client.put(
            "primary", primary, priority=0, input_price_per_million=1e6
        )
        await llm.client.put("fallback", openai_fallback, priority=1)
        primary.inject(faults.wrong_shape(payload), times=None)

        watch = Stopwatch()
        response = await llm.client.complete()

        assert watch.seconds < NO_TIMEOUT_WAITED
        assert primary.completions == 1

    assert response.provider_id == "fallback"
    assert response.content == DEFAULT_REPLY
    assert classes(response) == [("primary", pb.ERROR_CLASS_MALFORMED_RESPONSE)]
    assert response.cost_usd == 0.0
