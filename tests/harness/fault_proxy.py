"""A TCP proxy a test puts between a service and PostgreSQL or Redis to fake outages.

The proxy runs its own asyncio loop on its own thread, so it keeps forwarding
whatever the code under test does with its loop (even blocking it), and its
controls are plain synchronous calls that take effect before they return:

    proxy = await fault_proxy(*host_port(postgres_url))  # the fixture: a factory
    db = await open_database(proxy.url_for(postgres_url))
    proxy.cut()       # reset every live connection, refuse (accept, reset) new ones
    proxy.stall()     # keep connections open, forward nothing, in either direction
    proxy.slow(0.2)   # forward everything, each chunk 0.2 s late
    proxy.restore()   # back to normal; data held back by a stall is delivered

Outside pytest, `FaultProxy(host, port).start()` and `.close()` do the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger(__name__)

Mode = Literal["normal", "cut", "stall"]
T = TypeVar("T")

_CHUNK = 64 * 1024
_CONTROL_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream twin."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        for pump in self.pumps:
            pump.cancel()
        for writer in (self.client, self.upstream):
            if writer is not None:
                _reset(writer)


class FaultProxy:
    """Forwards 127.0.0.1:`port` to the upstream, with faults on demand."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = "127.0.0.1"
        self.port = 0
        self._mode: Mode = "normal"
        self._delay_s = 0.0
        self._links: set[_Link] = set()
        # Created by start(), so a proxy that never starts holds no loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._resumed: asyncio.Event | None = None

    def start(self) -> FaultProxy:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        self._control(self._listen())
        return self

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def active_connections(self) -> int:
        return self._control(self._count_links())

    def url_for(self, url: str) -> str:
        """`url` (postgresql://, redis://, ...) with its host and port replaced
        by the proxy's, keeping user, password, path and query."""
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}{self.host}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        self._control(self._set_mode("cut", 0.0))

    def stall(self) -> None:
        self._control(self._set_mode("stall", 0.0))

    def slow(self, delay_s: float) -> None:
        self._control(self._set_mode("normal", delay_s))

    def restore(self) -> None:
        self._control(self._set_mode("normal", 0.0))

    def close(self) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        self._control(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CONTROL_TIMEOUT_S)
        self._loop.close()

    def _control(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            work.close()
            raise RuntimeError("the fault proxy is not started")
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        return future.result(_CONTROL_TIMEOUT_S)

    async def _listen(self) -> None:
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _count_links(self) -> int:
        return len(self._links)

    async def _set_mode(self, mode: Mode, delay_s: float) -> None:
        assert self._resumed is not None
        self._mode = mode
        self._delay_s = delay_s
        if mode == "stall":
            self._resumed.clear()
        else:
            self._resumed.set()
        if mode == "cut":
            for link in list(self._links):
                link.reset()
            self._links.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        self._links.clear()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._mode == "cut":
            _reset(writer)
            return

        link = _Link(client=writer)
        self._links.add(link)
        try:
            await self._forward(link, reader)
        except asyncio.CancelledError:
            # Closing the proxy: asyncio would log a cancelled handler.
            link.reset()
        finally:
            self._links.discard(link)

    async def _forward(self, link: _Link, reader: asyncio.StreamReader) -> None:
        writer = link.client
        try:
            up_reader, link.upstream = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError as exc:
            logger.warning("fault proxy cannot reach its upstream: %s", exc)
            _reset(writer)
            return
        if link not in self._links:  # cut while connecting upstream
            link.reset()
            return

        link.pumps = [
            asyncio.create_task(self._pump(link, reader, link.upstream)),
            asyncio.create_task(self._pump(link, up_reader, writer)),
        ]
        await asyncio.gather(*link.pumps, return_exceptions=True)
        if link in self._links:  # ended by a peer, not reset by cut()
            for end in (writer, link.upstream):
                end.close()

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        assert self._resumed is not None
        try:
            while data := await reader.read(_CHUNK):
                # A stall holds the chunk (and stops reading) until it ends.
                await self._resumed.wait()
                if self._delay_s:
                    await asyncio.sleep(self._delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side closed or failed: close the other, as a dropped
            # connection would, and end the pump going the other way.
            writer.close()
            for pump in link.pumps:
                if pump is not asyncio.current_task():
                    pump.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, as a dropped network or crashed peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    writer.transport.abort()


def host_port(url: str) -> tuple[str, int]:
    """Where a proxy for `url` forwards: `await fault_proxy(*host_port(url))`."""
    parts = urlsplit(url)
    default_ports = {"redis": 6379, "rediss": 6379}
    port = parts.port or default_ports.get(parts.scheme, 5432)
    return parts.hostname or "127.0.0.1", port
