"""How long a call to a dependency (cache, vault, auth for their tokens) may take."""

from __future__ import annotations

import asyncio

# The share of a request's remaining time a dependency call may use: the rest
# is held in reserve for the providers, which are what the caller asked for.
DEPENDENCY_SHARE = 0.5


def dependency_budget(timeout: float, deadline: float | None) -> float:
    """Seconds a dependency call may take: its own `timeout`, capped by a share
    of what is left until the request's `deadline` (event-loop time), so a
    stalled cache or vault cannot spend the time a provider needs; 0 when
    nothing is left."""
    if deadline is None:
        return timeout
    left = deadline - asyncio.get_running_loop().time()
    return max(0.0, min(timeout, left * DEPENDENCY_SHARE))
