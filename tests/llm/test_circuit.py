"""Circuit breakers: open on failures, serve from the fallback, probe, close again."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

import grpc
import pytest

from empire.llm.v1 import llm_service_pb2 as pb
from services.llm.circuit import Admission, CircuitBreaker, CircuitState
from services.llm.health import HealthBoard
from services.llm.models import (
    ChatMessage,
    Completion,
    CompletionRequest,
    ErrorClass,
    Outcome,
    ProviderConfig,
    ProviderFailure,
)
from services.llm.router import ProviderRouter
from services.llm.settings import RouterPolicy
from shared.errors import EmpireError
from tests.harness import fake_providers as faults
from tests.harness.fake_providers import DEFAULT_REPLY, FakeProvider
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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admitted(breaker: CircuitBreaker) -> Admission:
    admission = breaker.try_acquire()
    assert admission is not None
    return admission


def tripped(policy: RouterPolicy = FAST_POLICY) -> tuple[Clock, CircuitBreaker]:
    """A breaker its first failure opened, and its clock."""
    clock = Clock()
    breaker = CircuitBreaker("p", policy, clock)
    breaker.record_failure(admitted(breaker), trip=True)
    return clock, breaker


async def state_of(llm: RunningLlm, provider_id: str) -> pb.ProviderHealth:
    response = await llm.client.call(
        "GetProviderHealth", pb.GetProviderHealthRequest(provider_id=provider_id)
    )
    return response.providers[0]


async def test_primary_down_then_recovered_opens_serves_fallback_probes_and_returns(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.server_error(503), times=None)

    # Three failures in a row open the primary's circuit (2 + 1 attempts).
    first = await llm.client.complete()
    second = await llm.client.complete()
    assert first.provider_id == second.provider_id == "fallback"
    assert openai_primary.completions == 3
    health = await state_of(llm, "primary")
    assert health.state == pb.CIRCUIT_STATE_OPEN
    assert health.consecutive_failures == 3
    assert health.last_error_class == pb.ERROR_CLASS_SERVER_ERROR
    assert health.HasField("next_probe_time")

    # While open, the primary is not even tried (and nothing waits for it).
    watch = Stopwatch()
    third = await llm.client.complete()
    assert watch.seconds < REQUEST_TIMEOUT
    assert third.provider_id == "fallback" and not third.failed_attempts
    assert openai_primary.completions == 3

    # The primary recovers; after the cool-down one request probes it.
    openai_primary.clear()
    await asyncio.sleep(FAST_POLICY.breaker_cooldown_seconds + 0.1)
    probe = await llm.client.complete()
    after = await llm.client.complete()

    assert probe.provider_id == after.provider_id == "primary"
    assert probe.content == DEFAULT_REPLY
    assert (openai_primary.completions, openai_fallback.completions) == (5, 3)
    assert (await state_of(llm, "primary")).state == pb.CIRCUIT_STATE_CLOSED


async def test_active_health_check_probes_and_closes_a_recovered_circuit(
    llm: RunningLlm, openai_primary: FakeProvider, openai_fallback: FakeProvider
) -> None:
    await llm.client.put("primary", openai_primary, priority=0)
    await llm.client.put("fallback", openai_fallback, priority=1)
    openai_primary.inject(faults.auth_error(), times=1)
    await llm.client.complete()
    assert (await state_of(llm, "primary")).state == pb.CIRCUIT_STATE_OPEN

    await asyncio.sleep(FAST_POLICY.breaker_cooldown_seconds + 0.1)
    await llm.runtime.checker.check_all()

    health = await state_of(llm, "primary")
    assert health.state == pb.CIRCUIT_STATE_CLOSED
    assert health.last_check_ok
    probe_body = openai_primary.requests[-1].body
    assert probe_body["max_completion_tokens"] == 1
    response = await llm.client.complete()
    assert response.provider_id == "primary" and not response.failed_attempts


async def test_an_anthropic_provider_passes_its_health_check(
    llm: RunningLlm, anthropic_fallback: FakeProvider
) -> None:
    await llm.client.put("claude", anthropic_fallback)

    await llm.runtime.checker.check_all()

    health = await state_of(llm, "claude")
    assert health.last_check_ok
    assert health.last_error_class == pb.ERROR_CLASS_UNSPECIFIED
    assert anthropic_fallback.requests[-1].body == {
        "model": "claude-fake",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "ping"}],
        "temperature": 0.0,
    }


async def test_scheduled_checks_close_a_recovered_circuit(
    issuer: LocalIssuer,
    sqlite_url: str,
    openai_primary: FakeProvider,
    openai_fallback: FakeProvider,
) -> None:
    async for llm in start_llm(issuer, sqlite_url, health_check_interval_seconds=0.3):
        await llm.client.put("primary", openai_primary, priority=0)
        await llm.client.put("fallback", openai_fallback, priority=1)
        openai_primary.inject(faults.auth_error(), times=1)
        await llm.client.complete()
        assert (await state_of(llm, "primary")).state == pb.CIRCUIT_STATE_OPEN

        record = llm.runtime.health.get("primary")
        closed = await eventually(
            lambda record=record: record.state is CircuitState.CLOSED
        )

    assert closed
    assert openai_primary.requests[-1].body["max_completion_tokens"] == 1


async def test_scheduled_checks_spare_providers_that_just_served_a_caller(
    issuer: LocalIssuer,
    sqlite_url: str,
    openai_primary: FakeProvider,
    openai_fallback: FakeProvider,
) -> None:
    async for llm in start_llm(issuer, sqlite_url, health_check_interval_seconds=600):
        await llm.client.put("busy", openai_primary, priority=0)
        await llm.client.put("idle", openai_fallback, priority=1)
        await llm.client.complete()

        await llm.runtime.checker.check_all(skip_recently_served=True)
        health = await llm.client.call(
            "GetProviderHealth", pb.GetProviderHealthRequest()
        )

    assert (openai_primary.completions, openai_fallback.completions) == (1, 1)
    checked = {p.provider_id: p.HasField("last_check_time") for p in health.providers}
    assert checked == {"busy": False, "idle": True}


async def test_health_checks_honour_a_providers_retry_after(
    issuer: LocalIssuer,
    sqlite_url: str,
    openai_primary: FakeProvider,
    openai_fallback: FakeProvider,
) -> None:
    # A 429 asking for a wait holds back every request of the replica; a
    # health check is a request too, and must not hit the provider meanwhile.
    policy = dataclasses.replace(FAST_POLICY, max_retry_after_seconds=600)
    async for llm in start_llm(issuer, sqlite_url, policy=policy):
        await llm.client.put("primary", openai_primary, priority=0)
        await llm.client.put("fallback", openai_fallback, priority=1)
        openai_primary.inject(faults.rate_limited(retry_after=300), times=1)
        response = await llm.client.complete()

        await llm.runtime.checker.check_all()

    assert response.provider_id == "fallback"
    assert (openai_primary.completions, openai_fallback.completions) == (1, 2)


async def test_lone_provider_circuit_opens_and_fails_fast_far_under_its_timeout(
    issuer: LocalIssuer, sqlite_url: str, openai_primary: FakeProvider
) -> None:
    # A cool-down beyond the caller's deadline: no probe can be waited for.
    policy = dataclasses.replace(
        FAST_POLICY, breaker_cooldown_seconds=60, breaker_cooldown_max_seconds=120
    )
    async for llm in start_llm(issuer, sqlite_url, policy=policy):
        await llm.client.put("primary", openai_primary, request_timeout=seconds(30))
        openai_primary.inject(faults.server_error(500), times=None)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await llm.client.complete()
        assert (await state_of(llm, "primary")).state == pb.CIRCUIT_STATE_OPEN
        seen = openai_primary.completions

        watch = Stopwatch()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.client.complete(timeout=10)
        took = watch.seconds

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "CIRCUIT_OPEN"
    assert openai_primary.completions == seen
    # Far under the caller's 10 s deadline and the provider's 30 s timeout.
    assert took < REQUEST_TIMEOUT


async def test_lone_provider_request_waits_for_the_probe_when_its_deadline_allows(
    issuer: LocalIssuer, sqlite_url: str, openai_primary: FakeProvider
) -> None:
    cooldown = 2.0
    policy = dataclasses.replace(FAST_POLICY, breaker_cooldown_seconds=cooldown)
    async for llm in start_llm(issuer, sqlite_url, policy=policy):
        await llm.client.put("primary", openai_primary)
        openai_primary.inject(faults.server_error(500), times=None)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await llm.client.complete()
        watch = Stopwatch()  # the circuit opened just before this
        seen = openai_primary.completions
        openai_primary.clear()

        response = await llm.client.complete(timeout=10)
        took = watch.seconds
        state = (await state_of(llm, "primary")).state

    assert response.content == DEFAULT_REPLY
    assert not response.failed_attempts
    assert openai_primary.completions == seen + 1
    assert state == pb.CIRCUIT_STATE_CLOSED
    # The probe came no sooner than one cool-down after the failure that
    # opened the circuit, and the request waited about that long: not the
    # caller's whole 10 s deadline.
    probe_gap = openai_primary.requests[-1].at - openai_primary.requests[-2].at
    assert probe_gap >= cooldown
    assert cooldown - 0.5 <= took < cooldown + REQUEST_TIMEOUT


@pytest.mark.parametrize(
    "error_type, after",
    [
        pytest.param("overloaded_error", pb.CIRCUIT_STATE_OPEN, id="overloaded"),
        pytest.param(
            "invalid_request_error", pb.CIRCUIT_STATE_HALF_OPEN, id="invalid-request"
        ),
    ],
)
async def test_a_probe_answered_by_an_error_event_never_closes_the_circuit(
    llm: RunningLlm, openai_fallback: FakeProvider, error_type: str, after: int
) -> None:
    async with FakeProvider("anthropic", model="claude-fake") as primary:
        await llm.client.put("primary", primary, priority=0)
        await llm.client.put("fallback", openai_fallback, priority=1)
        primary.inject(faults.auth_error(), times=1)
        await llm.client.complete()
        assert (await state_of(llm, "primary")).state == pb.CIRCUIT_STATE_OPEN

        await asyncio.sleep(FAST_POLICY.breaker_cooldown_seconds + 0.1)
        # The probe's stream starts with HTTP 200, then the error event.
        primary.inject(faults.error_event(error_type), times=None)
        watch = Stopwatch()
        result = await llm.client.stream()
        took = watch.seconds
        health = await state_of(llm, "primary")

    assert result.done is not None and result.done.provider_id == "fallback"
    assert [a.provider_id for a in result.done.failed_attempts] == ["primary"]
    assert primary.completions == 2  # the tripping call and the one probe
    # A server error reopens the circuit; a refusal inside a 200 stream gives
    # no verdict: the circuit stays half-open for the next probe.
    assert health.state == after
    assert took < REQUEST_TIMEOUT


@pytest.mark.parametrize(
    "failure, state",
    [
        pytest.param(
            ProviderFailure(ErrorClass.BAD_REQUEST, "no prefill", http_status=400),
            CircuitState.CLOSED,
            id="4xx-refusal-proves-it-answers",
        ),
        pytest.param(
            ProviderFailure(ErrorClass.BAD_REQUEST, "no", http_status=200),
            CircuitState.HALF_OPEN,
            id="refusal-inside-a-200-stream",
        ),
        pytest.param(
            ProviderFailure(ErrorClass.CONTENT_POLICY, "filtered"),
            CircuitState.HALF_OPEN,
            id="no-http-status",
        ),
        pytest.param(
            ProviderFailure(ErrorClass.DEADLINE_EXCEEDED, "the caller's deadline"),
            CircuitState.HALF_OPEN,
            id="deadline",
        ),
        pytest.param(
            ProviderFailure(ErrorClass.SERVER_ERROR, "x", http_status=200),
            CircuitState.OPEN,
            id="server-error-event",
        ),
    ],
)
def test_only_an_http_refusal_closes_a_half_open_circuit(
    failure: ProviderFailure, state: CircuitState
) -> None:
    clock = Clock()
    board = HealthBoard(FAST_POLICY, clock)
    breaker = board.get("p").breaker
    breaker.record_failure(admitted(breaker), trip=True)
    clock.now += FAST_POLICY.breaker_cooldown_seconds
    probe = admitted(breaker)

    board.record_failure("p", failure, probe)

    assert breaker.state is state
    if state is CircuitState.HALF_OPEN:
        assert breaker.try_acquire()  # the slot is free for the next probe


def test_breaker_opens_on_failure_rate_without_a_run_of_failures() -> None:
    clock = Clock()
    breaker = CircuitBreaker("p", FAST_POLICY, clock)
    for _ in range(5):
        breaker.record_success(admitted(breaker))
        breaker.record_failure(admitted(breaker))
        clock.now += 0.1
    assert breaker.consecutive_failures == 1
    assert breaker.state is CircuitState.OPEN


def test_breaker_rate_forgets_failures_outside_its_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker("p", FAST_POLICY, clock)
    for _ in range(4):
        breaker.record_success(admitted(breaker))
        breaker.record_failure(admitted(breaker))
    clock.now += FAST_POLICY.breaker_window_seconds + 1
    breaker.record_success(admitted(breaker))
    breaker.record_failure(admitted(breaker))
    assert breaker.state is CircuitState.CLOSED
    assert breaker.recent() == (2, 1)


def test_half_open_lets_one_probe_and_a_failed_probe_doubles_the_cooldown() -> None:
    policy = dataclasses.replace(FAST_POLICY, breaker_cooldown_seconds=1.0)
    clock, breaker = tripped(policy)
    assert breaker.try_acquire() is None

    clock.now += 1.0
    probe = admitted(breaker)
    assert probe.probe
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.try_acquire() is None  # only one at a time
    breaker.record_failure(probe)
    assert breaker.state is CircuitState.OPEN
    assert breaker.open_until == pytest.approx(clock.now + 2.0)

    clock.now += 2.0
    breaker.record_success(admitted(breaker))
    assert breaker.state is CircuitState.CLOSED
    assert not admitted(breaker).probe and not admitted(breaker).probe


def test_cancelled_probe_frees_the_slot_for_the_next_one() -> None:
    clock, breaker = tripped()
    clock.now += FAST_POLICY.breaker_cooldown_seconds
    breaker.release(admitted(breaker))
    assert admitted(breaker).probe


PROVIDER = ProviderConfig(
    provider_id="p",
    kind="openai",
    endpoint="http://127.0.0.1:9/v1",
    model="m",
    route="chat",
    request_timeout_seconds=30.0,
)
REQUEST = CompletionRequest(
    route="chat", messages=(ChatMessage("user", "hi"),), max_tokens=8
)


class GatedProvider:
    """Stands in for the registry, the client pool, its client and the usage
    recorder: every completion waits until the test answers it."""

    def __init__(self) -> None:
        self.calls: list[asyncio.Future[Completion]] = []
        self.keys = self

    def route(self, route: str) -> list[ProviderConfig]:
        return [PROVIDER]

    async def client_for(
        self, provider: ProviderConfig, deadline: float | None = None
    ) -> GatedProvider:
        return self

    async def complete(self, request: CompletionRequest) -> Completion:
        answer = asyncio.get_running_loop().create_future()
        self.calls.append(answer)
        return await answer

    def invalidate(self, api_key_id: str) -> None:
        pass

    def add_attempt(self, record: object) -> None:
        pass

    async def sent(self, count: int) -> None:
        while len(self.calls) < count:
            await asyncio.sleep(0)


def answer(call: asyncio.Future[Completion]) -> None:
    call.set_result(Completion("ok", "stop", 1, 1))


def refuse(call: asyncio.Future[Completion]) -> None:
    call.set_exception(
        ProviderFailure(ErrorClass.BAD_REQUEST, "no prefill", http_status=400)
    )


async def settle(request: asyncio.Task[Outcome]) -> None:
    with contextlib.suppress(EmpireError):
        await request


async def cancel(request: asyncio.Task[Outcome]) -> None:
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request


@pytest.mark.parametrize(
    "finish_old",
    [
        pytest.param(answer, id="success"),
        pytest.param(refuse, id="4xx-refusal"),
        pytest.param(None, id="cancelled"),
    ],
)
async def test_an_attempt_from_before_the_circuit_opened_never_decides_its_probe(
    finish_old: Callable[[asyncio.Future[Completion]], None] | None,
) -> None:
    clock = Clock()
    gated = GatedProvider()
    board = HealthBoard(FAST_POLICY, clock)
    router = ProviderRouter(
        gated,  # type: ignore[arg-type]
        gated,  # type: ignore[arg-type]
        board,
        gated,  # type: ignore[arg-type]
        FAST_POLICY,
    )
    breaker = board.get("p").breaker

    def request() -> asyncio.Task[Outcome]:
        deadline = asyncio.get_running_loop().time() + 30
        return asyncio.create_task(router.complete(router.begin(REQUEST, deadline)))

    old = request()  # admitted while the circuit is closed, and slow
    await gated.sent(1)
    tripping = request()
    await gated.sent(2)
    gated.calls[1].set_exception(
        ProviderFailure(ErrorClass.AUTHENTICATION, "bad key", http_status=401)
    )
    await settle(tripping)
    assert breaker.state is CircuitState.OPEN

    clock.now += FAST_POLICY.breaker_cooldown_seconds
    probe = request()
    await gated.sent(3)
    assert breaker.state is CircuitState.HALF_OPEN

    finished: Callable[[asyncio.Task[Outcome]], Awaitable[None]] = cancel
    if finish_old is not None:
        finish_old(gated.calls[0])
        finished = settle
    await finished(old)

    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.try_acquire() is None  # no second probe while the first runs
    answer(gated.calls[2])
    outcome = await probe
    assert outcome.provider.provider_id == "p"
    assert breaker.state is CircuitState.CLOSED
    assert len(gated.calls) == 3


def test_only_an_attempt_admitted_while_half_open_holds_the_probe_slot() -> None:
    clock, breaker = tripped()
    before = admitted(CircuitBreaker("q", FAST_POLICY, clock))  # closed: no probe
    clock.now += FAST_POLICY.breaker_cooldown_seconds

    probe = admitted(breaker)

    assert probe.probe and not before.probe


@pytest.mark.parametrize(
    "failure, in_a_row",
    [
        pytest.param(
            ProviderFailure(ErrorClass.BAD_REQUEST, "no prefill", http_status=400),
            0,
            id="4xx-refusal",
        ),
        pytest.param(
            ProviderFailure(ErrorClass.DEADLINE_EXCEEDED, "the caller's deadline"),
            1,
            id="deadline",
        ),
        pytest.param(
            ProviderFailure(ErrorClass.CONTENT_POLICY, "filtered", http_status=200),
            1,
            id="refusal-event",
        ),
        pytest.param(
            ProviderFailure(ErrorClass.SERVER_ERROR, "upstream", http_status=503),
            2,
            id="server-error",
        ),
    ],
)
def test_an_attempt_from_before_the_circuit_opened_leaves_the_probe_to_decide(
    failure: ProviderFailure, in_a_row: int
) -> None:
    clock = Clock()
    board = HealthBoard(FAST_POLICY, clock)
    breaker = board.get("p").breaker
    old = admitted(breaker)  # sent while closed, and slow
    breaker.record_failure(admitted(breaker), trip=True)
    clock.now += FAST_POLICY.breaker_cooldown_seconds
    probe = admitted(breaker)

    board.record_failure("p", failure, old)

    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.try_acquire() is None
    assert breaker.next_probe_time is None  # nothing waits for a free slot
    # Its outcome still counts (a server error adds to the run, a 4xx ends it).
    assert breaker.consecutive_failures == in_a_row
    board.record_success("p", 0.1, probe)
    assert breaker.state is CircuitState.CLOSED


def test_a_probe_of_an_earlier_half_open_spell_frees_no_later_slot() -> None:
    clock, breaker = tripped()
    clock.now += FAST_POLICY.breaker_cooldown_seconds
    first = admitted(breaker)
    breaker.record_failure(first)  # reopens, with the cool-down doubled
    clock.now += 2 * FAST_POLICY.breaker_cooldown_seconds
    second = admitted(breaker)

    breaker.release(first)
    assert breaker.try_acquire() is None
    breaker.record_success(first)
    assert breaker.state is CircuitState.HALF_OPEN

    breaker.record_success(second)
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_a_probe_ended_by_a_bug_of_this_service_frees_the_probe_slot(
    llm: RunningLlm,
    openai_primary: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    streamed: bool,
) -> None:
    await llm.client.put("primary", openai_primary)
    openai_primary.inject(faults.auth_error(), times=1)  # opens the circuit at once
    with pytest.raises(grpc.aio.AioRpcError):
        await llm.client.complete()
    assert (await state_of(llm, "primary")).state == pb.CIRCUIT_STATE_OPEN

    # The next request waits out the cool-down and is the probe; a bug of
    # this service (not a provider failure) ends it as INTERNAL.
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the adapter")

    monkeypatch.setattr("services.llm.providers.OpenAIClient.complete", broken)
    monkeypatch.setattr("services.llm.providers.OpenAIClient.stream", broken)
    if streamed:
        result = await llm.client.stream(timeout=10)
        assert result.error is not None
        assert result.error.code() == grpc.StatusCode.INTERNAL
    else:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.client.complete(timeout=10)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
    monkeypatch.undo()

    # The bug took the probe slot with it only for that request: the next
    # request probes again and the recovered provider closes the circuit.
    response = await llm.client.complete(timeout=10)

    assert response.content == DEFAULT_REPLY
    assert (await state_of(llm, "primary")).state == pb.CIRCUIT_STATE_CLOSED


async def test_a_lone_provider_pacing_itself_with_retry_after_keeps_its_circuit(
    issuer: LocalIssuer, sqlite_url: str, openai_primary: FakeProvider
) -> None:
    # More 429s in a row than open a circuit, each asking for a short wait;
    # an opened circuit would shut the provider out far beyond the deadline.
    policy = dataclasses.replace(
        FAST_POLICY, breaker_cooldown_seconds=60, breaker_cooldown_max_seconds=120
    )
    paced = policy.breaker_consecutive_failures
    async for llm in start_llm(issuer, sqlite_url, policy=policy):
        await llm.client.put("primary", openai_primary)
        openai_primary.inject(faults.rate_limited(retry_after=0.1), times=paced)

        response = await llm.client.complete(timeout=10)
        following = await llm.client.complete(timeout=10)
        state = (await state_of(llm, "primary")).state

    assert response.content == following.content == DEFAULT_REPLY
    assert [a.error_class for a in response.failed_attempts] == [
        pb.ERROR_CLASS_RATE_LIMITED
    ] * paced
    assert not following.failed_attempts
    assert openai_primary.completions == paced + 2
    assert state == pb.CIRCUIT_STATE_CLOSED


@pytest.mark.parametrize(
    "retry_after, counted",
    [
        pytest.param(0.5, False, id="honoured-retry-after"),
        pytest.param(None, True, id="no-retry-after"),
        pytest.param(0.0, True, id="retry-after-0"),
        pytest.param(3600.0, True, id="retry-after-beyond-the-policy"),
    ],
)
def test_only_a_429_without_an_honoured_retry_after_counts_against_the_circuit(
    retry_after: float | None, counted: bool
) -> None:
    board = HealthBoard(FAST_POLICY, Clock())
    breaker = board.get("p").breaker
    for _ in range(FAST_POLICY.breaker_consecutive_failures):
        failure = ProviderFailure(
            ErrorClass.RATE_LIMITED,
            "the provider is rate limiting",
            http_status=429,
            retry_after=retry_after,
        )
        board.record_failure("p", failure, admitted(breaker))

    opened = breaker.state is CircuitState.OPEN
    assert opened is counted
