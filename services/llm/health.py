"""What this replica knows of each provider's health: circuit, errors, latency."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from services.llm.circuit import Admission, CircuitBreaker, CircuitState
from services.llm.models import ErrorClass, ProviderFailure
from services.llm.settings import RouterPolicy

_LATENCY_SAMPLES = 512


@dataclass
class ProviderHealth:
    """The health record of one provider."""

    breaker: CircuitBreaker
    latencies: deque[float] = field(
        default_factory=lambda: deque(maxlen=_LATENCY_SAMPLES)
    )
    last_error_class: ErrorClass | None = None
    last_error: str = ""
    last_error_time: float = 0.0  # epoch seconds
    last_check_time: float = 0.0  # epoch seconds
    last_check_ok: bool = False
    last_success: float = 0.0  # monotonic seconds of the last good attempt
    # Until when (monotonic) the provider asked, with a `Retry-After`, to be
    # left alone; every request of this replica honours it.
    paced_until: float = 0.0

    def latency_percentile(self, fraction: float) -> float:
        return percentile(list(self.latencies), fraction)

    @property
    def state(self) -> CircuitState:
        return self.breaker.state


class HealthBoard:
    """Health records by provider id, fed by attempts and by active checks."""

    def __init__(
        self, policy: RouterPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._records: dict[str, ProviderHealth] = {}

    def get(self, provider_id: str) -> ProviderHealth:
        record = self._records.get(provider_id)
        if record is None:
            breaker = CircuitBreaker(provider_id, self._policy, self._clock)
            record = self._records[provider_id] = ProviderHealth(breaker)
        return record

    def served_since(self, provider_id: str, moment: float) -> bool:
        """Whether the provider answered well after `moment` (monotonic)."""
        record = self._records.get(provider_id)
        return record is not None and record.last_success > moment

    def forget(self, provider_id: str) -> None:
        self._records.pop(provider_id, None)

    def record_success(
        self, provider_id: str, latency: float, admission: Admission
    ) -> None:
        """An attempt admitted by the provider's circuit answered well."""
        record = self.get(provider_id)
        record.latencies.append(latency)
        record.last_success = self._clock()
        record.breaker.record_success(admission)

    def record_failure(
        self, provider_id: str, failure: ProviderFailure, admission: Admission
    ) -> None:
        """Count a failure against the provider; a refusal of the request's own
        making (an HTTP 4xx answer) proves the provider answers and counts as
        a success; a 429 with an honoured `Retry-After`, and anything else,
        gives no verdict and only frees the circuit's probe slot, so it can
        never close a half-open circuit. Only the attempt holding the probe
        slot (`admission`) decides a half-open circuit."""
        record = self.get(provider_id)
        record.last_error_class = failure.error_class
        record.last_error = failure.message
        record.last_error_time = time.time()
        wait = self._honoured_wait(failure)
        if wait is not None:
            # The provider is up and said when to come back; requests honour
            # that wait. Counted, a run of short waits would open the circuit
            # for a cool-down far longer than the provider asked for.
            record.paced_until = max(record.paced_until, self._clock() + wait)
            record.breaker.release(admission)
        elif failure.error_class.counts_against_provider:
            trip = failure.error_class is ErrorClass.AUTHENTICATION
            record.breaker.record_failure(admission, trip=trip)
        elif failure.refusal:
            record.breaker.record_success(admission)
        else:
            record.breaker.release(admission)

    def _honoured_wait(self, failure: ProviderFailure) -> float | None:
        """The `Retry-After` of a rate limit when the router honours it (more
        than 0, at most `max_retry_after_seconds`), else None: a 429 asking
        for no wait paces nothing, so it counts like one without a hint."""
        wait = failure.retry_after
        if failure.error_class is not ErrorClass.RATE_LIMITED or wait is None:
            return None
        return wait if 0 < wait <= self._policy.max_retry_after_seconds else None

    def record_check(self, provider_id: str, ok: bool) -> None:
        record = self.get(provider_id)
        record.last_check_time = time.time()
        record.last_check_ok = ok


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `samples`, 0 when there are none."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]
