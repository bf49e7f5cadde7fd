"""StreamComplete under provider faults: never a truncated success, and each
fault ends in a time bound far from real timings (never a performance check)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from empire.llm.v1 import llm_service_pb2 as pb
from tests.harness import fake_providers as faults
from tests.harness.fake_providers import DEFAULT_REPLY, FakeProvider, Flavor
from tests.harness.grpc_errors import error_info
from tests.llm.harness import RunningLlm, Stopwatch, seconds, user

FLAVORS = [
    pytest.param("openai", id="openai"),
    pytest.param("anthropic", id="anthropic"),
]
# The route's stream timers, far above what a fault answered at once takes, so
# that "nothing waited" holds on a loaded machine; the tests of the timers
# themselves shorten them to SHORT_WAIT, with the request timeout (the SDK's
# HTTP backstop) far above.
LONG_WAIT = 4.0
NO_WAIT = LONG_WAIT / 2
SHORT_WAIT = 1.0
REQUEST_TIMEOUT = 30.0


@pytest.fixture(params=FLAVORS)
async def primary(request: pytest.FixtureRequest) -> AsyncIterator[FakeProvider]:
    async with FakeProvider(request.param, model="primary-model") as fake:
        yield fake


@pytest.fixture
async def fallback() -> AsyncIterator[FakeProvider]:
    # The fallback rejects assistant prefill, as some providers do: a restart
    # that replayed the partial answer as a prefill would fail here.
    async with FakeProvider(
        "anthropic", model="fallback-model", rejects_prefill=True
    ) as fake:
        yield fake


async def put(
    llm: RunningLlm, provider_id: str, fake: FakeProvider, priority: int, wait: float
) -> None:
    await llm.client.put(
        provider_id,
        fake,
        priority=priority,
        first_token_timeout=seconds(wait),
        stream_idle_timeout=seconds(wait),
        request_timeout=seconds(REQUEST_TIMEOUT),
    )


@pytest.fixture
async def route(
    llm: RunningLlm, primary: FakeProvider, fallback: FakeProvider
) -> RunningLlm:
    await put(llm, "primary", primary, 0, LONG_WAIT)
    await put(llm, "fallback", fallback, 1, LONG_WAIT)
    return llm


async def test_healthy_stream_starts_streams_and_ends_with_done(
    route: RunningLlm, primary: FakeProvider, fallback: FakeProvider
) -> None:
    result = await route.client.stream()

    assert result.error is None
    kinds = result.kinds()
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"}
    assert result.events[0].start.provider_id == "primary"
    assert result.text() == DEFAULT_REPLY
    assert result.done is not None
    assert result.done.usage.output_tokens == 9
    assert result.done.finish_reason == pb.FINISH_REASON_STOP
    assert (primary.completions, fallback.completions) == (1, 0)


async def test_failure_before_any_token_fails_over_invisibly(
    route: RunningLlm, primary: FakeProvider, fallback: FakeProvider
) -> None:
    primary.inject(faults.server_error(503), times=None)

    watch = Stopwatch()
    result = await route.client.stream()

    assert result.error is None
    assert "reset" not in result.kinds()
    assert [e.start.provider_id for e in result.events if e.HasField("start")] == [
        "fallback"
    ]
    assert result.all_deltas() == DEFAULT_REPLY
    assert result.done is not None
    assert [a.provider_id for a in result.done.failed_attempts] == ["primary"] * 2
    assert (primary.completions, fallback.completions) == (2, 1)
    assert watch.seconds < NO_WAIT


@pytest.mark.parametrize(
    "error_type, error_class, tries",
    [
        pytest.param(
            "overloaded_error", pb.ERROR_CLASS_SERVER_ERROR, 2, id="overloaded"
        ),
        pytest.param("api_error", pb.ERROR_CLASS_SERVER_ERROR, 2, id="api-error"),
        pytest.param(
            "rate_limit_error", pb.ERROR_CLASS_RATE_LIMITED, 1, id="rate-limit"
        ),
    ],
)
async def test_error_event_before_any_content_fails_over_invisibly(
    route: RunningLlm,
    primary: FakeProvider,
    fallback: FakeProvider,
    error_type: str,
    error_class: int,
    tries: int,
) -> None:
    # The stream began with HTTP 200; the provider's fault comes as an event.
    primary.inject(faults.error_event(error_type, after_chunks=0), times=None)

    watch = Stopwatch()
    result = await route.client.stream(allow_reset=True)

    assert result.error is None
    assert "reset" not in result.kinds()
    assert result.events[0].start.provider_id == "fallback"
    assert result.text() == result.all_deltas() == DEFAULT_REPLY
    assert result.done is not None and result.done.provider_id == "fallback"
    attempts = [(a.provider_id, a.error_class) for a in result.done.failed_attempts]
    assert attempts == [("primary", error_class)] * tries
    assert (primary.completions, fallback.completions) == (tries, 1)
    assert watch.seconds < NO_WAIT


async def test_an_error_event_naming_the_context_window_goes_to_a_larger_one(
    llm: RunningLlm,
) -> None:
    # vLLM's event: a type of its own and the status in `code`, inside a 200.
    context_event = faults.error_event(
        "BadRequestError",
        message="This model's maximum context length is 4096 tokens.",
        code=400,
    )
    async with (
        FakeProvider("openai", model="small-model") as small,
        FakeProvider("openai", model="small-model") as twin,
        FakeProvider("anthropic", model="large-model") as large,
    ):
        for priority, (provider_id, fake, window) in enumerate(
            [
                ("small", small, 4096),
                ("small-twin", twin, 4096),
                ("large", large, 10**5),
            ]
        ):
            await llm.client.put(
                provider_id,
                fake,
                priority=priority,
                context_window=window,
                first_token_timeout=seconds(LONG_WAIT),
                stream_idle_timeout=seconds(LONG_WAIT),
                request_timeout=seconds(REQUEST_TIMEOUT),
            )
        small.inject(context_event, times=None)
        twin.inject(context_event, times=None)

        watch = Stopwatch()
        result = await llm.client.stream(allow_reset=True)

    assert result.error is None
    assert "reset" not in result.kinds()
    assert result.events[0].start.provider_id == "large"
    assert result.done is not None and result.done.provider_id == "large"
    attempts = [(a.provider_id, a.error_class) for a in result.done.failed_attempts]
    assert attempts == [("small", pb.ERROR_CLASS_CONTEXT_LENGTH_EXCEEDED)]
    assert (small.completions, twin.completions, large.completions) == (1, 0, 1)
    assert watch.seconds < NO_WAIT


async def test_an_error_event_quoting_the_prompt_repeats_no_prompt_text(
    route: RunningLlm, primary: FakeProvider, fallback: FakeProvider
) -> None:
    prompt = "Describe how the violet heron nests beside reservoir-0815"
    primary.inject(
        faults.error_event("invalid_request_error", quote_prompt=True), times=None
    )

    watch = Stopwatch()
    result = await route.client.stream(prompt)
    health = await route.client.call(
        "GetProviderHealth", pb.GetProviderHealthRequest(provider_id="primary")
    )

    assert result.done is not None and result.done.provider_id == "fallback"
    (attempt,) = result.done.failed_attempts
    assert attempt.error_class == pb.ERROR_CLASS_BAD_REQUEST
    for told in (attempt.message, health.providers[0].last_error):
        assert "heron" not in told and "reservoir" not in told
        assert "[prompt text]" in told
    assert (primary.completions, fallback.completions) == (1, 1)
    assert watch.seconds < NO_WAIT


async def test_slow_first_token_fails_over_without_retrying_the_provider(
    route: RunningLlm, primary: FakeProvider, fallback: FakeProvider
) -> None:
    await put(route, "primary", primary, 0, SHORT_WAIT)
    primary.inject(faults.slow_first_token(30), times=None)

    watch = Stopwatch()
    result = await route.client.stream(timeout=60)
    took = watch.seconds

    assert result.error is None
    assert result.all_deltas() == DEFAULT_REPLY
    assert result.done is not None
    attempts = result.done.failed_attempts
    assert [(a.provider_id, a.error_class) for a in attempts] == [
        ("primary", pb.ERROR_CLASS_TIMEOUT)
    ]
    # The service's first-token timer ended it, not the SDK's HTTP backstop.
    assert attempts[0].message == "the provider did not answer in time"
    assert attempts[0].latency.ToMilliseconds() >= 900
    assert (primary.completions, fallback.completions) == (1, 1)
    # The 1 s first-token timer, not the 30 s delay, backstop or deadline.
    assert SHORT_WAIT <= took < 10


@pytest.mark.parametrize(
    "fault, error_class",
    [
        pytest.param(faults.cut_mid_stream(3), pb.ERROR_CLASS_CONNECTION, id="cut"),
        pytest.param(
            faults.stall_mid_stream(3), pb.ERROR_CLASS_STREAM_STALLED, id="stall"
        ),
        pytest.param(
            faults.invalid_json_mid_stream(3),
            pb.ERROR_CLASS_MALFORMED_RESPONSE,
            id="invalid-json",
        ),
        pytest.param(
            faults.truncated_without_finish(3),
            pb.ERROR_CLASS_MALFORMED_RESPONSE,
            id="clean-close-without-finish",
        ),
        pytest.param(
            faults.error_event("overloaded_error", after_chunks=3),
            pb.ERROR_CLASS_SERVER_ERROR,
            id="error-event",
        ),
    ],
)
async def test_break_after_content_resets_and_restarts_cleanly(
    route: RunningLlm,
    primary: FakeProvider,
    fallback: FakeProvider,
    fault: faults.Fault,
    error_class: int,
) -> None:
    stalls = error_class == pb.ERROR_CLASS_STREAM_STALLED
    if stalls:
        await put(route, "primary", primary, 0, SHORT_WAIT)
    primary.inject(fault, times=None)

    watch = Stopwatch()
    result = await route.client.stream(allow_reset=True, timeout=60)
    took = watch.seconds

    assert result.error is None
    kinds = result.kinds()
    # A cut connection or a server error is retried once in place; each broken
    # attempt is one reset.
    retried = error_class in (pb.ERROR_CLASS_CONNECTION, pb.ERROR_CLASS_SERVER_ERROR)
    assert primary.completions == (2 if retried else 1)
    assert kinds.count("reset") == primary.completions
    reset = next(e.reset for e in result.events if e.HasField("reset"))
    assert reset.failed_attempt.provider_id == "primary"
    assert reset.failed_attempt.error_class == error_class
    # Before the reset: the primary's first words, nothing else (no garbage).
    before = "".join(
        e.delta.content
        for e in result.events[: kinds.index("reset")]
        if e.HasField("delta")
    )
    assert before == "The quick brown "
    # After it: a fresh start and the fallback's complete answer, once.
    last_reset = len(kinds) - 1 - kinds[::-1].index("reset")
    after = result.events[last_reset + 1 :]
    assert after[0].start.provider_id == "fallback"
    assert result.text() == DEFAULT_REPLY
    assert result.done is not None and result.done.provider_id == "fallback"
    # The restart sent the caller's conversation, not the partial answer.
    assert fallback.requests[-1].body["messages"] == [
        {"role": "user", "content": "hello"}
    ]
    assert fallback.completions == 1
    if stalls:
        # The 1 s idle timer ended it, not the 30 s request timeout (the
        # SDK's HTTP backstop) nor the caller's 60 s.
        assert SHORT_WAIT <= took < 10
    else:
        assert took < NO_WAIT


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(faults.cut_mid_stream(3), id="cut"),
        pytest.param(faults.stall_mid_stream(3), id="stall"),
        pytest.param(faults.invalid_json_mid_stream(3), id="invalid-json"),
        pytest.param(
            faults.error_event("overloaded_error", after_chunks=3), id="error-event"
        ),
    ],
)
async def test_break_after_content_without_reset_ends_with_a_clear_error(
    route: RunningLlm,
    primary: FakeProvider,
    fallback: FakeProvider,
    fault: faults.Fault,
) -> None:
    stalls = fault.kind == "stall"
    if stalls:
        await put(route, "primary", primary, 0, SHORT_WAIT)
    primary.inject(fault, times=None)

    watch = Stopwatch()
    result = await route.client.stream(allow_reset=False, timeout=60)
    took = watch.seconds

    assert result.error is not None
    assert result.error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(result.error).reason == "STREAM_INTERRUPTED"
    assert result.done is None  # never a success with a truncated answer
    assert result.all_deltas() == "The quick brown "
    assert (primary.completions, fallback.completions) == (1, 0)
    assert (SHORT_WAIT <= took < 10) if stalls else (took < NO_WAIT)


@pytest.mark.parametrize("hold_open", [False, True], ids=["closed", "held-open"])
async def test_missing_end_sentinel_after_the_finish_is_a_complete_answer(
    route: RunningLlm, primary: FakeProvider, fallback: FakeProvider, hold_open: bool
) -> None:
    primary.inject(faults.no_done(hold_open=hold_open), times=None)

    watch = Stopwatch()
    result = await route.client.stream(timeout=10)

    assert result.error is None
    assert result.text() == DEFAULT_REPLY
    assert result.done is not None and result.done.provider_id == "primary"
    assert not result.done.failed_attempts
    assert (primary.completions, fallback.completions) == (1, 0)
    # Held open, the end is waited for briefly (1 s), never the 4 s idle timer.
    assert watch.seconds < LONG_WAIT


async def test_fallback_rejecting_prefill_still_serves_a_caller_prefill_elsewhere(
    llm: RunningLlm, fallback: FakeProvider
) -> None:
    async with FakeProvider("openai", model="accepts-prefill") as accepting:
        await put(llm, "strict", fallback, 0, LONG_WAIT)
        await put(llm, "accepting", accepting, 1, LONG_WAIT)
        messages = [
            user("finish my sentence"),
            pb.Message(role=pb.ROLE_ASSISTANT, content="The"),
        ]

        watch = Stopwatch()
        result = await llm.client.stream(messages=messages)
        took = watch.seconds

    assert took < NO_WAIT
    assert result.error is None
    assert result.done is not None and result.done.provider_id == "accepting"
    attempts = result.done.failed_attempts
    assert [(a.provider_id, a.error_class) for a in attempts] == [
        ("strict", pb.ERROR_CLASS_BAD_REQUEST)
    ]
    assert "prefill" in attempts[0].message
    assert (fallback.completions, accepting.completions) == (1, 1)


async def test_stream_that_fails_everywhere_is_a_clean_error(
    route: RunningLlm, primary: FakeProvider, fallback: FakeProvider
) -> None:
    await put(route, "fallback", fallback, 1, SHORT_WAIT)
    primary.inject(faults.server_error(500), times=None)
    fallback.inject(faults.no_answer(), times=None)

    watch = Stopwatch()
    result = await route.client.stream(allow_reset=True, timeout=60)
    took = watch.seconds

    assert result.error is not None
    assert result.error.code() == grpc.StatusCode.UNAVAILABLE
    assert result.events == []
    assert error_info(result.error).metadata["attempts"] == (
        "primary:SERVER_ERROR,primary:SERVER_ERROR,fallback:TIMEOUT"
    )
    assert (primary.completions, fallback.completions) == (2, 1)
    # One 1 s first-token wait on the silent fallback, never the caller's 60 s.
    assert SHORT_WAIT <= took < 10


# Valid JSON of the wrong shape. The SDKs build their event models without
# validating them, so a wrong type shows only when a field is read.
WRONG_EVENTS = [
    pytest.param(
        "openai",
        {"choices": [{"index": 0, "delta": {"content": 5}, "finish_reason": None}]},
        id="openai-number-as-text",
    ),
    pytest.param("openai", [1, 2], id="openai-list"),
    pytest.param("openai", {"choices": [None]}, id="openai-null-choice"),
    pytest.param(
        "openai",
        {"choices": [], "usage": {"prompt_tokens": -5, "completion_tokens": 1}},
        id="openai-negative-tokens",
    ),
    pytest.param(
        "anthropic",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": 5},
        },
        id="anthropic-number-as-text",
    ),
    pytest.param("anthropic", {"type": "message_start"}, id="anthropic-no-message"),
    pytest.param(
        "anthropic",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": "many"},
        },
        id="anthropic-text-as-tokens",
    ),
]


@pytest.mark.parametrize("flavor, payload", WRONG_EVENTS)
async def test_an_event_of_the_wrong_shape_fails_over_and_passes_nothing_on(
    llm: RunningLlm, fallback: FakeProvider, flavor: Flavor, payload: object
) -> None:
    async with FakeProvider(flavor, model="primary-model") as primary:
        await put(llm, "primary", primary, 0, LONG_WAIT)
        await put(llm, "fallback", fallback, 1, LONG_WAIT)
        primary.inject(faults.wrong_shape(payload), times=None)

        watch = Stopwatch()
        result = await llm.client.stream(allow_reset=True)
        took = watch.seconds

    assert result.error is None
    assert "reset" not in result.kinds()
    assert result.events[0].start.provider_id == "fallback"
    assert result.all_deltas() == DEFAULT_REPLY
    assert result.done is not None and result.done.provider_id == "fallback"
    attempts = [(a.provider_id, a.error_class) for a in result.done.failed_attempts]
    assert attempts == [("primary", pb.ERROR_CLASS_MALFORMED_RESPONSE)]
    assert (primary.completions, fallback.completions) == (1, 1)
    assert took < NO_WAIT


@pytest.mark.parametrize("allow_reset", [False, True], ids=["no-reset", "reset"])
async def test_a_connection_reset_after_the_finish_is_a_complete_answer(
    route: RunningLlm, primary: FakeProvider, fallback: FakeProvider, allow_reset: bool
) -> None:
    # The finish signal came; only the end sentinel was lost, with the
    # connection: the answer is whole, as when the sentinel is just missing.
    primary.inject(faults.no_done(reset=True), times=None)

    watch = Stopwatch()
    result = await route.client.stream(allow_reset=allow_reset, timeout=10)

    assert result.error is None
    assert "reset" not in result.kinds()
    assert result.text() == result.all_deltas() == DEFAULT_REPLY
    assert result.done is not None and result.done.provider_id == "primary"
    assert not result.done.failed_attempts
    assert (primary.completions, fallback.completions) == (1, 0)
    assert watch.seconds < NO_WAIT
