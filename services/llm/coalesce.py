"""Merges stream deltas that are ready at once into one message.

A provider often delivers several chunks in one network read; sending each as
its own gRPC message costs more than the text it carries. The router runs in
its own task and queues events; the writer takes whatever has queued up, joins
consecutive deltas (all but the first, which goes out alone and at once), and
writes the rest as they are. A slow reader therefore never stalls the provider
(nor trips its idle timeout), and a fast one gets each chunk as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from services.llm.router import Delta, RouterEvent


async def coalesced(events: AsyncIterator[RouterEvent]) -> AsyncIterator[RouterEvent]:
    """`events`, with runs of already-queued deltas joined into one."""
    queued: deque[RouterEvent] = deque()
    ready = asyncio.Event()
    outcome: list[BaseException | None] = []

    async def produce() -> None:
        try:
            async for event in events:
                queued.append(event)
                ready.set()
        except BaseException as error:  # handed to the writer, which re-raises
            outcome.append(error)
        else:
            outcome.append(None)
        finally:
            ready.set()

    producer = asyncio.create_task(produce())
    first_sent = False
    try:
        while True:
            await ready.wait()
            ready.clear()
            while queued:
                event = queued.popleft()
                if not isinstance(event, Delta):
                    yield event
                    continue
                if first_sent and queued and isinstance(queued[0], Delta):
                    parts = [event.text]
                    while queued and isinstance(queued[0], Delta):
                        parts.append(queued.popleft().text)  # type: ignore[union-attr]
                    event = Delta("".join(parts))
                first_sent = True
                yield event
            if outcome:
                if outcome[0] is not None:
                    raise outcome[0]
                return
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
