"""The provider router: picks providers for a request and runs its attempts.

Every failure is classified (see `failures.py`) and the class decides what
happens next: a transient error is retried on the same provider after an
exponential, jittered backoff and then failed over; a rate limit waits for its
`Retry-After` only when no other provider is ready and the wait fits the
deadline; a silent, slow or stalled provider is abandoned for the next one; a
context-length error moves to a larger context window; a content-policy
refusal never goes back to the same model. Each request has a retry budget and
a total deadline, and no attempt outlives either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.llm.circuit import Admission
from services.llm.failures import classify
from services.llm.health import HealthBoard
from services.llm.models import (
    Completion,
    CompletionRequest,
    ErrorClass,
    FailedAttempt,
    Outcome,
    ProviderConfig,
    ProviderFailure,
    StreamEnd,
)
from services.llm.pool import ClientPool
from services.llm.redaction import redact_failure
from services.llm.registry import ProviderRegistry
from services.llm.settings import RouterPolicy
from services.llm.store import AttemptRecord
from services.llm.usage import UsageRecorder
from shared.errors import (
    DeadlineExceeded,
    EmpireError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)

logger = logging.getLogger(__name__)

# Tokens are never shorter than this many characters on average, so a prompt
# longer than this many characters per token of a window surely overflows it.
CHARS_PER_TOKEN_FLOOR = 8
# How often a request waiting on a half-open circuit's probe looks again.
PROBE_POLL_SECONDS = 0.05

_RETRIED_IN_PLACE = {ErrorClass.SERVER_ERROR, ErrorClass.CONNECTION}


@dataclass(frozen=True)
class Start:
    """A provider starts streaming the answer."""

    provider: ProviderConfig


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Reset:
    """Everything streamed so far is void; another provider starts over."""

    failed: FailedAttempt


@dataclass(frozen=True)
class Done:
    outcome: Outcome


RouterEvent = Start | Delta | Reset | Done


@dataclass
class RequestRun:
    """One request's state across its attempts."""

    request: CompletionRequest
    request_id: str
    deadline: float  # event-loop time
    started: float  # event-loop time
    plan: list[ProviderConfig]
    failed: list[FailedAttempt] = field(default_factory=list)
    attempts: int = 0
    tries: dict[str, int] = field(default_factory=dict)
    ready_at: dict[str, float] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)
    excluded_models: set[str] = field(default_factory=set)
    min_context_window: int = 0
    preferred: str | None = None
    last_failure: ProviderFailure | None = None

    def eligible(self, provider: ProviderConfig) -> bool:
        if provider.provider_id in self.excluded:
            return False
        if provider.model in self.excluded_models:
            return False
        window = provider.context_window
        # After a known window overflowed, an unknown one (0) is no larger: it
        # may be a local server's few thousand tokens, or one that cuts the
        # prompt to fit instead of refusing it.
        if self.min_context_window and window < self.min_context_window:
            return False
        floor = self.request.prompt_chars // CHARS_PER_TOKEN_FLOOR
        return not (window and floor > window)


class ProviderRouter:
    def __init__(
        self,
        registry: ProviderRegistry,
        pool: ClientPool,
        health: HealthBoard,
        recorder: UsageRecorder,
        policy: RouterPolicy,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.health = health
        self.recorder = recorder
        self.policy = policy
        self._rng = rng or random.Random()

    # -- ordering ------------------------------------------------------------------

    def plan(self, route: str) -> list[ProviderConfig]:
        """The route's providers in the order this request will try them:
        priority first; within a priority, a weighted random draw, with equal
        weights ordered by the configured tie-breaker (latency or cost)."""
        ordered: list[ProviderConfig] = []
        tier: list[ProviderConfig] = []
        for provider in self.registry.route(route):
            if tier and provider.priority != tier[0].priority:
                ordered += self._order_tier(tier)
                tier = []
            tier.append(provider)
        return ordered + self._order_tier(tier)

    def _order_tier(self, tier: list[ProviderConfig]) -> list[ProviderConfig]:
        if len(tier) <= 1:
            return tier
        drawn = sorted(
            tier,
            key=lambda p: self._rng.random() ** (1.0 / max(1, p.weight)),
            reverse=True,
        )
        if self.policy.tie_breaker == "none":
            return drawn
        for weight in {p.weight for p in drawn}:
            slots = [i for i, p in enumerate(drawn) if p.weight == weight]
            peers = sorted((drawn[i] for i in slots), key=self._tie_metric)
            for slot, provider in zip(slots, peers, strict=True):
                drawn[slot] = provider
        return drawn

    def _tie_metric(self, provider: ProviderConfig) -> float:
        if self.policy.tie_breaker == "cost":
            return provider.input_price_per_million + provider.output_price_per_million
        return self.health.get(provider.provider_id).latency_percentile(0.5)

    # -- completions ---------------------------------------------------------------

    def begin(self, request: CompletionRequest, deadline: float) -> RequestRun:
        loop = asyncio.get_running_loop()
        budget = loop.time() + self.policy.request_deadline_seconds
        return RequestRun(
            request=request,
            request_id=uuid.uuid4().hex,
            deadline=min(deadline, budget),
            started=loop.time(),
            plan=self.plan(request.route),
        )

    async def complete(self, run: RequestRun) -> Outcome:
        """One complete answer, or the error that ends the request."""
        loop = asyncio.get_running_loop()
        while True:
            provider, admission = await self._next_provider(run)
            started = loop.time()
            timer = asyncio.timeout_at(
                min(started + provider.request_timeout_seconds, run.deadline)
            )
            try:
                async with timer:
                    client = await self.pool.client_for(provider, run.deadline)
                    completion = await client.complete(run.request)
            except Exception as error:
                failure = self._failure_of(
                    error, timer, run, ErrorClass.TIMEOUT, provider, admission
                )
                self._settle_failure(run, provider, admission, failure, started)
                continue
            except asyncio.CancelledError:
                self.health.get(provider.provider_id).breaker.release(admission)
                raise
            return self._settle_success(run, provider, admission, completion, started)

    async def stream(
        self, run: RequestRun, *, allow_reset: bool
    ) -> AsyncIterator[RouterEvent]:
        """The answer as events: a failure before any delta was sent is replaced
        invisibly; one after is a `Reset` (when allowed) or an error."""
        loop = asyncio.get_running_loop()
        while True:
            provider, admission = await self._next_provider(run)
            started = loop.time()
            sent = False
            end: StreamEnd | None = None
            texts: list[str] = []
            timer = asyncio.timeout_at(
                min(started + provider.first_token_timeout_seconds, run.deadline)
            )
            try:
                async with timer:
                    client = await self.pool.client_for(provider, run.deadline)
                    async with contextlib.aclosing(
                        client.stream(run.request)
                    ) as events:
                        async for event in events:
                            if isinstance(event, StreamEnd):
                                end = event
                                continue
                            if not sent:
                                sent = True
                                yield Start(provider)
                            texts.append(event.text)
                            # The caller's pace is not the provider's silence.
                            timer.reschedule(None)
                            yield Delta(event.text)
                            timer.reschedule(
                                min(
                                    loop.time() + provider.stream_idle_timeout_seconds,
                                    run.deadline,
                                )
                            )
            except Exception as error:
                silent = ErrorClass.STREAM_STALLED if texts else ErrorClass.TIMEOUT
                failure = self._failure_of(
                    error, timer, run, silent, provider, admission
                )
                attempt = self._settle_failure(
                    run, provider, admission, failure, started
                )
                if sent and not allow_reset:
                    raise Unavailable(
                        f"provider {provider.provider_id} failed after part of the"
                        " answer was sent; the answer is incomplete",
                        reason="STREAM_INTERRUPTED",
                        metadata=_attempts_metadata(run),
                    ) from None
                if sent:
                    yield Reset(attempt)
                continue
            except (asyncio.CancelledError, GeneratorExit):
                self.health.get(provider.provider_id).breaker.release(admission)
                raise
            if end is None:
                # The adapter always ends with StreamEnd or raises; be safe.
                end = StreamEnd("unspecified")
            completion = Completion(
                "".join(texts), end.finish_reason, end.input_tokens, end.output_tokens
            )
            if not sent:
                yield Start(provider)
            yield Done(
                self._settle_success(run, provider, admission, completion, started)
            )
            return

    # -- choosing ------------------------------------------------------------------

    async def _next_provider(self, run: RequestRun) -> tuple[ProviderConfig, Admission]:
        """The next provider to try, with its circuit's leave for the attempt,
        waiting for a backoff, a `Retry-After` or a circuit's probe when that
        fits the deadline; raises when none is left."""
        loop = asyncio.get_running_loop()
        while True:
            if run.attempts >= self.policy.max_attempts:
                raise self._exhausted(run, "the retry budget is spent")
            candidates = self._candidates(run)
            if not candidates:
                raise self._exhausted(run, "no provider of the route is left to try")

            now = loop.time()
            wake = run.deadline
            for provider in candidates:
                ready = max(
                    run.ready_at.get(provider.provider_id, 0.0),
                    self.health.get(provider.provider_id).paced_until,
                )
                if ready > now:
                    wake = min(wake, ready)
                    if provider.provider_id == run.preferred:
                        break  # retry in place: wait for it, do not skip ahead
                    continue
                breaker = self.health.get(provider.provider_id).breaker
                admission = breaker.try_acquire()
                if admission is not None:
                    run.attempts += 1
                    run.tries[provider.provider_id] = (
                        run.tries.get(provider.provider_id, 0) + 1
                    )
                    run.preferred = None
                    return provider, admission
                probe = breaker.next_probe_time
                wake = min(
                    wake, probe if probe is not None else now + PROBE_POLL_SECONDS
                )
                if provider.provider_id == run.preferred:
                    run.preferred = None  # its circuit opened: fail over

            if wake >= run.deadline:
                raise self._exhausted(run, "every provider left is cooling down")
            await asyncio.sleep(max(0.0, wake - now))

    def _candidates(self, run: RequestRun) -> list[ProviderConfig]:
        candidates = [p for p in run.plan if run.eligible(p)]
        if run.preferred is not None:
            candidates.sort(key=lambda p: p.provider_id != run.preferred)
        return candidates

    # -- settling attempts ---------------------------------------------------------

    def _failure_of(
        self,
        error: Exception,
        timer: asyncio.Timeout,
        run: RequestRun,
        silent: ErrorClass,
        provider: ProviderConfig,
        admission: Admission,
    ) -> ProviderFailure:
        if timer.expired():
            if asyncio.get_running_loop().time() >= run.deadline - 0.001:
                return ProviderFailure(
                    ErrorClass.DEADLINE_EXCEEDED, "the request's deadline ended it"
                )
            if silent is ErrorClass.STREAM_STALLED:
                return ProviderFailure(silent, "the stream stalled")
            return ProviderFailure(silent, "the provider did not answer in time")
        try:
            failure = classify(error)
        except Exception:
            # A bug of this service, not a provider failure: INTERNAL for the
            # caller, no verdict on the provider, and the circuit's probe slot
            # freed, or the provider would stay half-open for good.
            self.health.get(provider.provider_id).breaker.release(admission)
            raise
        # Before the failure is logged, shown in health or sent to the caller.
        prompt = (message.content for message in run.request.messages)
        return redact_failure(failure, prompt)

    def _settle_failure(
        self,
        run: RequestRun,
        provider: ProviderConfig,
        admission: Admission,
        failure: ProviderFailure,
        started: float,
    ) -> FailedAttempt:
        """Record a failed attempt and decide what the request does next."""
        loop = asyncio.get_running_loop()
        latency = loop.time() - started
        attempt = FailedAttempt(
            provider.provider_id,
            provider.model,
            failure.error_class,
            failure.message,
            latency,
            failure.http_status,
        )
        run.failed.append(attempt)
        run.last_failure = failure
        self.health.record_failure(provider.provider_id, failure, admission)
        self._record_attempt(run, provider, latency, failure=failure)
        logger.info(
            "attempt on provider %s failed: %s",
            provider.provider_id,
            failure.error_class.value,
        )
        self._decide(run, provider, failure)
        return attempt

    def _decide(
        self, run: RequestRun, provider: ProviderConfig, failure: ProviderFailure
    ) -> None:
        loop = asyncio.get_running_loop()
        pid = provider.provider_id
        error_class = failure.error_class
        tries = run.tries.get(pid, 0)
        in_place = tries <= self.policy.retries_per_provider

        if error_class is ErrorClass.DEADLINE_EXCEEDED:
            raise self._exhausted(run, "the deadline passed")
        if error_class is ErrorClass.AUTHENTICATION:
            self.pool.keys.invalidate(provider.api_key_id)
            run.excluded.add(pid)
        elif error_class is ErrorClass.CONTEXT_LENGTH_EXCEEDED:
            run.excluded_models.add(provider.model)
            if provider.context_window:
                run.min_context_window = max(
                    run.min_context_window, provider.context_window + 1
                )
        elif error_class is ErrorClass.CONTENT_POLICY:
            run.excluded_models.add(provider.model)
        elif error_class is ErrorClass.RATE_LIMITED:
            wait = failure.retry_after
            if wait is None and in_place:
                wait = self._backoff(tries)
            fits = wait is not None and wait <= self.policy.max_retry_after_seconds
            if fits and wait is not None and loop.time() + wait < run.deadline:
                run.ready_at[pid] = loop.time() + wait
            else:
                run.excluded.add(pid)
        elif error_class in _RETRIED_IN_PLACE and in_place:
            run.ready_at[pid] = loop.time() + self._backoff(tries)
            run.preferred = pid
        else:
            # Silent, slow, stalled, malformed, refused: never the same again.
            run.excluded.add(pid)

    def _backoff(self, tries: int) -> float:
        """Full jitter over an exponential ceiling."""
        ceiling = min(
            self.policy.backoff_max_seconds,
            self.policy.backoff_base_seconds * (2 ** max(0, tries - 1)),
        )
        return self._rng.uniform(0, ceiling)

    def _settle_success(
        self,
        run: RequestRun,
        provider: ProviderConfig,
        admission: Admission,
        completion: Completion,
        started: float,
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        latency = loop.time() - started
        self.health.record_success(provider.provider_id, latency, admission)
        self._record_attempt(run, provider, latency, completion=completion)
        return Outcome(
            request_id=run.request_id,
            provider=provider,
            completion=completion,
            failed_attempts=run.failed,
            latency_seconds=loop.time() - run.started,
        )

    def _record_attempt(
        self,
        run: RequestRun,
        provider: ProviderConfig,
        latency: float,
        *,
        failure: ProviderFailure | None = None,
        completion: Completion | None = None,
    ) -> None:
        input_tokens = completion.input_tokens if completion else 0
        output_tokens = completion.output_tokens if completion else 0
        self.recorder.add_attempt(
            AttemptRecord(
                request_id=run.request_id,
                attempt=run.attempts,
                route=run.request.route,
                provider_id=provider.provider_id,
                model=provider.model,
                time_ms=int(time.time() * 1000),
                latency_ms=latency * 1000,
                ok=failure is None,
                error_class=failure.error_class.value if failure else "",
                http_status=failure.http_status if failure else 0,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                # Failed attempts are never billed.
                cost_usd=provider.cost(input_tokens, output_tokens)
                if completion
                else 0.0,
            )
        )

    # -- giving up -----------------------------------------------------------------

    def _exhausted(self, run: RequestRun, why: str) -> EmpireError:
        """The error that ends a request that cannot be served."""
        metadata = _attempts_metadata(run)
        route = run.request.route
        last = run.last_failure
        if last is not None and last.error_class is ErrorClass.DEADLINE_EXCEEDED:
            return DeadlineExceeded(
                f"route {route}: the deadline passed after"
                f" {len(run.failed)} attempt(s)",
                reason="DEADLINE_EXCEEDED",
                metadata=metadata,
            )
        if last is not None and last.error_class is ErrorClass.CONTENT_POLICY:
            return FailedPrecondition(
                f"route {route}: the provider refused the content: {last.message}",
                reason="CONTENT_POLICY",
                metadata={**metadata, "provider_reason": last.message},
            )
        if last is not None and last.error_class is ErrorClass.CONTEXT_LENGTH_EXCEEDED:
            error = InvalidArgument(
                "messages",
                f"the prompt does not fit any model of route {route}",
                reason="CONTEXT_LENGTH_EXCEEDED",
            )
            error.metadata.update(metadata)
            return error
        if not run.failed:
            return self._unattempted(run)
        return Unavailable(
            f"route {route}: {len(run.failed)} attempt(s) failed and {why};"
            f" last: {run.failed[-1].error_class.value}",
            reason="ALL_PROVIDERS_FAILED",
            metadata=metadata,
        )

    def _unattempted(self, run: RequestRun) -> EmpireError:
        """Why a request ended before any attempt."""
        route = run.request.route
        if not run.plan:
            return Unavailable(
                f"route {route} has no enabled provider", reason="NO_PROVIDER"
            )
        if not any(run.eligible(p) for p in run.plan):
            return InvalidArgument(
                "messages",
                f"the prompt is longer than the context window of every provider"
                f" of route {route}",
                reason="CONTEXT_LENGTH_EXCEEDED",
            )
        now = asyncio.get_running_loop().time()
        if now >= run.deadline - 0.001:
            return DeadlineExceeded(
                f"route {route}: the deadline passed before a provider was free",
                reason="DEADLINE_EXCEEDED",
            )
        if any(self.health.get(p.provider_id).paced_until > now for p in run.plan):
            return Unavailable(
                f"route {route}: every provider asked to be left alone (Retry-After)"
                " or has its circuit open until after the deadline",
                reason="RATE_LIMITED",
                metadata=_attempts_metadata(run),
            )
        return Unavailable(
            f"route {route}: every provider's circuit is open and no probe is"
            " due before the deadline",
            reason="CIRCUIT_OPEN",
            metadata=_attempts_metadata(run),
        )


def _attempts_metadata(run: RequestRun) -> dict[str, str]:
    attempts = ",".join(f"{a.provider_id}:{a.error_class.value}" for a in run.failed)
    return {"route": run.request.route, "attempts": attempts}
