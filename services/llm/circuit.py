"""A per-provider circuit breaker: closed, open, half-open, closed again.

It opens after a run of consecutive failures or when the failed share of the
recent window crosses a threshold, lets one probe through once its cool-down
ends, and closes on the probe's success or reopens with a doubled cool-down.
Each admitted attempt holds an `Admission` and hands it back with its outcome:
only the probe's own outcome frees its slot or decides the half-open circuit,
so an attempt sent before the circuit opened, ending while the probe runs,
neither lets a second probe out nor closes the circuit on stale evidence.
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


class Admission:
    """Leave for one attempt to go to the provider; `probe` says whether it
    holds the half-open circuit's probe slot."""

    __slots__ = ("probe",)

    def __init__(self, probe: bool) -> None:
        self.probe = probe


_ADMITTED = Admission(probe=False)


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
        self._probe: Admission | None = None
        self._window: deque[tuple[float, bool]] = deque(maxlen=_WINDOW_LIMIT)

    def try_acquire(self) -> Admission | None:
        """Leave for a request to go to the provider now, or None; when the
        circuit is half-open, the leave is its one probe slot."""
        if self.state is CircuitState.CLOSED:
            return _ADMITTED
        if self.state is CircuitState.OPEN:
            if self._clock() < self.open_until:
                return None
            self.state = CircuitState.HALF_OPEN
            self._probe = None
        if self._probe is not None:
            return None
        self._probe = Admission(probe=True)
        return self._probe

    def release(self, admission: Admission) -> None:
        """The admitted attempt ended without a verdict on the provider."""
        if self._holds_probe(admission):
            self._probe = None

    def record_success(self, admission: Admission) -> None:
        """The admitted attempt proved the provider answers; only the probe's
        own success closes a half-open circuit."""
        self._remember(True)
        self.consecutive_failures = 0
        if self.state is CircuitState.HALF_OPEN and self._holds_probe(admission):
            self.state = CircuitState.CLOSED
            self._cooldown = self._policy.breaker_cooldown_seconds
            self._probe = None
            logger.info("circuit of provider %s closed again", self.name)

    def record_failure(self, admission: Admission, *, trip: bool = False) -> None:
        """A failure that says the provider is unwell; `trip` opens at once.
        While half-open, an attempt other than the probe is only counted: it
        was sent before the circuit last opened, so it tells nothing new."""
        self._remember(False)
        self.consecutive_failures += 1
        if self.state is CircuitState.HALF_OPEN:
            if self._holds_probe(admission):
                self._reopen()
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
        if self.state is CircuitState.HALF_OPEN and self._probe is None:
            return self._clock()
        return None

    def recent(self) -> tuple[int, int]:
        """Attempts and failures in the recent window."""
        self._trim()
        failures = sum(1 for _, ok in self._window if not ok)
        return len(self._window), failures

    def _holds_probe(self, admission: Admission) -> bool:
        # Identity, not the flag: a probe of an earlier half-open spell (the
        # circuit reopened meanwhile) holds nothing any more.
        return admission is self._probe

    def _reopen(self) -> None:
        self._cooldown = min(
            self._cooldown * 2, self._policy.breaker_cooldown_max_seconds
        )
        self._open("its probe failed")

    def _open(self, why: str) -> None:
        self.state = CircuitState.OPEN
        self._probe = None
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
