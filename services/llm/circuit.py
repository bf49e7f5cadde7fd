"""A per-provider circuit breaker: closed, open, half-open, closed again.

It opens after a run of consecutive failures or when the failed share of the
recent window crosses a threshold, lets one probe through once its cool-down
ends, and closes on the probe's success or reopens with a doubled cool-down.
It works the same for a route with a single provider: nothing here looks at
the provider's siblings.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable

from services.llm.settings import RouterPolicy

logger = logging.getLogger(__name__)

_WINDOW_LIMIT = 1000


class CircuitState(enum.Enum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


class CircuitBreaker:
    """The circuit of one provider; time comes from `clock` (monotonic seconds)."""

    def __init__(
        self,
        name: str,
        policy: RouterPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._policy = policy
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.open_until = 0.0
        self._cooldown = policy.breaker_cooldown_seconds
        self._probe_in_flight = False
        self._window: deque[tuple[float, bool]] = deque(maxlen=_WINDOW_LIMIT)

    def try_acquire(self) -> bool:
        """Whether a request may go to the provider now; claims the probe slot
        when the circuit is half-open."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if self._clock() < self.open_until:
                return False
            self.state = CircuitState.HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def release(self) -> None:
        """The acquired attempt ended without a verdict on the provider."""
        self._probe_in_flight = False

    def record_success(self) -> None:
        self._remember(True)
        self.consecutive_failures = 0
        if self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.CLOSED
            self._cooldown = self._policy.breaker_cooldown_seconds
            self._probe_in_flight = False
            logger.info("circuit of provider %s closed again", self.name)

    def record_failure(self, *, trip: bool = False) -> None:
        """A failure that says the provider is unwell; `trip` opens at once."""
        self._remember(False)
        self.consecutive_failures += 1
        if self.state is CircuitState.HALF_OPEN:
            self._cooldown = min(
                self._cooldown * 2, self._policy.breaker_cooldown_max_seconds
            )
            self._open("its probe failed")
        elif self.state is CircuitState.CLOSED:
            if trip:
                self._open("of a failure that trips it at once")
            elif self.consecutive_failures >= self._policy.breaker_consecutive_failures:
                self._open(f"of {self.consecutive_failures} failures in a row")
            elif self._failure_rate_exceeded():
                self._open("of its recent failure rate")

    @property
    def next_probe_time(self) -> float | None:
        """When an open circuit lets its next probe through (monotonic)."""
        if self.state is CircuitState.OPEN:
            return self.open_until
        if self.state is CircuitState.HALF_OPEN and not self._probe_in_flight:
            return self._clock()
        return None

    def recent(self) -> tuple[int, int]:
        """Attempts and failures in the recent window."""
        self._trim()
        failures = sum(1 for _, ok in self._window if not ok)
        return len(self._window), failures

    def _open(self, why: str) -> None:
        self.state = CircuitState.OPEN
        self._probe_in_flight = False
        self.open_until = self._clock() + self._cooldown
        logger.warning(
            "circuit of provider %s opened because %s; next probe in %.1fs",
            self.name,
            why,
            self._cooldown,
        )

    def _failure_rate_exceeded(self) -> bool:
        attempts, failures = self.recent()
        if attempts < self._policy.breaker_min_attempts:
            return False
        return failures / attempts >= self._policy.breaker_failure_rate

    def _remember(self, ok: bool) -> None:
        self._window.append((self._clock(), ok))

    def _trim(self) -> None:
        horizon = self._clock() - self._policy.breaker_window_seconds
        while self._window and self._window[0][0] < horizon:
            self._window.popleft()
