"""Queued stream deltas are joined; the first goes out alone; errors come last."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.llm.coalesce import coalesced
from services.llm.models import ProviderConfig
from services.llm.router import Delta, RouterEvent, Start
from shared.errors import Unavailable

PROVIDER = ProviderConfig("p", "openai", "http://127.0.0.1:9/v1", "m", "chat")


async def burst(
    *events: RouterEvent, error: Exception | None = None
) -> AsyncIterator[RouterEvent]:
    for event in events:
        yield event
    if error is not None:
        raise error


async def collect(events: AsyncIterator[RouterEvent]) -> list[RouterEvent]:
    return [event async for event in coalesced(events)]


async def test_a_burst_of_deltas_is_joined_after_the_first() -> None:
    out = await collect(burst(Start(PROVIDER), Delta("a"), Delta("b"), Delta("c")))
    assert out == [Start(PROVIDER), Delta("a"), Delta("bc")]


async def test_an_error_is_raised_after_the_deltas_before_it() -> None:
    seen: list[RouterEvent] = []
    with pytest.raises(Unavailable):
        async for event in coalesced(
            burst(Start(PROVIDER), Delta("a"), Delta("b"), error=Unavailable("x"))
        ):
            seen.append(event)
    assert seen == [Start(PROVIDER), Delta("a"), Delta("b")]
