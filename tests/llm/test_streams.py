"""StreamComplete under provider faults: never a truncated success."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from empire.llm.v1 import llm_service_pb2 as pb
from tests.harness import fake_providers as faults
from tests.harness.fake_providers import DEFAULT_REPLY, FakeProvider
from tests.harness.grpc_errors import error_info
from tests.llm.harness import RunningLlm, user

FLAVORS = [
    pytest.param("openai", id="openai"),
    pytest.param("anthropic", id="anthropic"),
]


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


@pytest.fixture
async def route(
    llm: RunningLlm, primary: FakeProvider, fallback: FakeProvider
) -> RunningLlm:
    await llm.client.put("primary", primary, priority=0)
    await llm.client.put("fallback", fallback, priority=1)
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


async def test_slow_first_token_fails_over_without_retrying_the_provider(
    route: RunningLlm, primary: FakeProvider, fallback: FakeProvider
) -> None:
    primary.inject(faults.slow_first_token(30), times=None)

    result = await route.client.stream()

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
    ],
)
async def test_break_after_content_resets_and_restarts_cleanly(
    route: RunningLlm,
    primary: FakeProvider,
    fallback: FakeProvider,
    fault: faults.Fault,
    error_class: int,
) -> None:
    primary.inject(fault, times=None)

    result = await route.client.stream(allow_reset=True)

    assert result.error is None
    kinds = result.kinds()
    # A cut connection is retried once in place; each broken attempt is one reset.
    retried = error_class == pb.ERROR_CLASS_CONNECTION
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


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(faults.cut_mid_stream(3), id="cut"),
        pytest.param(faults.stall_mid_stream(3), id="stall"),
        pytest.param(faults.invalid_json_mid_stream(3), id="invalid-json"),
    ],
)
async def test_break_after_content_without_reset_ends_with_a_clear_error(
    route: RunningLlm,
    primary: FakeProvider,
    fallback: FakeProvider,
    fault: faults.Fault,
) -> None:
    primary.inject(fault, times=None)

    result = await route.client.stream(allow_reset=False)

    assert result.error is not None
    assert result.error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(result.error).reason == "STREAM_INTERRUPTED"
    assert result.done is None  # never a success with a truncated answer
    assert result.all_deltas() == "The quick brown "
    assert (primary.completions, fallback.completions) == (1, 0)


@pytest.mark.parametrize("hold_open", [False, True], ids=["closed", "held-open"])
async def test_missing_end_sentinel_after_the_finish_is_a_complete_answer(
    route: RunningLlm, primary: FakeProvider, fallback: FakeProvider, hold_open: bool
) -> None:
    primary.inject(faults.no_done(hold_open=hold_open), times=None)

    result = await route.client.stream(timeout=10)

    assert result.error is None
    assert result.text() == DEFAULT_REPLY
    assert result.done is not None and result.done.provider_id == "primary"
    assert not result.done.failed_attempts
    assert (primary.completions, fallback.completions) == (1, 0)


async def test_fallback_rejecting_prefill_still_serves_a_caller_prefill_elsewhere(
    llm: RunningLlm, fallback: FakeProvider
) -> None:
    async with FakeProvider("openai", model="accepts-prefill") as accepting:
        await llm.client.put("strict", fallback, priority=0)
        await llm.client.put("accepting", accepting, priority=1)
        messages = [
            user("finish my sentence"),
            pb.Message(role=pb.ROLE_ASSISTANT, content="The"),
        ]

        result = await llm.client.stream(messages=messages)

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
    primary.inject(faults.server_error(500), times=None)
    fallback.inject(faults.no_answer(), times=None)

    result = await route.client.stream(allow_reset=True)

    assert result.error is not None
    assert result.error.code() == grpc.StatusCode.UNAVAILABLE
    assert result.events == []
    assert error_info(result.error).metadata["attempts"] == (
        "primary:SERVER_ERROR,primary:SERVER_ERROR,fallback:TIMEOUT"
    )
