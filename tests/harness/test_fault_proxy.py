"""The fault proxy forwards, cuts, stalls, slows and restores a TCP stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tests.harness.db_fixtures import FaultProxyFactory
from tests.harness.fault_proxy import FaultProxy, host_port

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A server that sends back every byte it receives."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def proxy(echo_port: int, fault_proxy: FaultProxyFactory) -> FaultProxy:
    return await fault_proxy("127.0.0.1", echo_port)


async def _connect(proxy: FaultProxy) -> Stream:
    return await asyncio.open_connection(proxy.host, proxy.port)


async def _round_trip(stream: Stream, data: bytes) -> bytes:
    reader, writer = stream
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 5)


async def _is_dropped(stream: Stream) -> bool:
    """True if the peer closed or reset the connection."""
    reader, writer = stream
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.read(4), 5) == b""
    except ConnectionError:
        return True


async def _is_refused(proxy: FaultProxy) -> bool:
    """True if a new connection is reset, during the handshake or right after."""
    try:
        stream = await _connect(proxy)
    except ConnectionError:
        return True
    return await _is_dropped(stream)


async def _nothing_arrives(stream: Stream, within_s: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(stream[0].read(1), within_s)
    except TimeoutError:
        return True
    return False


async def test_forwards_both_ways(proxy: FaultProxy) -> None:
    stream = await _connect(proxy)

    assert await _round_trip(stream, b"hello") == b"hello"
    assert await _round_trip(stream, b"x" * 200_000) == b"x" * 200_000
    assert proxy.active_connections == 1
    stream[1].close()


async def test_cut_resets_live_connections(proxy: FaultProxy) -> None:
    stream = await _connect(proxy)
    await _round_trip(stream, b"before")

    proxy.cut()

    assert await _is_dropped(stream)
    assert proxy.active_connections == 0


async def test_cut_refuses_new_connections(proxy: FaultProxy) -> None:
    proxy.cut()

    assert await _is_refused(proxy)


async def test_restore_after_cut_forwards_new_connections(proxy: FaultProxy) -> None:
    proxy.cut()
    proxy.restore()

    stream = await _connect(proxy)

    assert await _round_trip(stream, b"again") == b"again"
    stream[1].close()


async def test_stall_holds_data_on_open_connections_until_restore(
    proxy: FaultProxy,
) -> None:
    stream = await _connect(proxy)
    await _round_trip(stream, b"warm")

    proxy.stall()
    stream[1].write(b"held")
    fresh = await _connect(proxy)
    fresh[1].write(b"new")
    stalled_old = await _nothing_arrives(stream)
    stalled_new = await _nothing_arrives(fresh)
    proxy.restore()

    assert stalled_old and stalled_new
    assert await asyncio.wait_for(stream[0].readexactly(4), 5) == b"held"
    assert await asyncio.wait_for(fresh[0].readexactly(3), 5) == b"new"
    stream[1].close()
    fresh[1].close()


async def test_slow_delivers_every_chunk_late(proxy: FaultProxy) -> None:
    stream = await _connect(proxy)

    proxy.slow(0.5)
    stream[1].write(b"late")
    held_back = await _nothing_arrives(stream, within_s=0.2)
    arrived = await asyncio.wait_for(stream[0].readexactly(4), 5)
    proxy.restore()

    assert held_back
    assert arrived == b"late"
    assert await _round_trip(stream, b"fast again") == b"fast again"
    stream[1].close()


async def test_unreachable_upstream_drops_the_client(
    fault_proxy: FaultProxyFactory,
) -> None:
    proxy = await fault_proxy("127.0.0.1", 1)

    assert await _is_refused(proxy)


async def test_close_drops_connections_and_stops_listening(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port).start()
    stream = await _connect(proxy)
    await _round_trip(stream, b"hi")

    proxy.close()

    assert await _is_dropped(stream)
    with pytest.raises(ConnectionError):
        await _connect(proxy)


def test_url_for_keeps_credentials_database_and_options() -> None:
    proxy = FaultProxy("db.internal", 5432)
    proxy.port = 40001

    assert (
        proxy.url_for("postgresql://vault:s3cret@db.internal:5432/vault?sslmode=off")
        == "postgresql://vault:s3cret@127.0.0.1:40001/vault?sslmode=off"
    )
    assert proxy.url_for("redis://127.0.0.1:6379/2") == "redis://127.0.0.1:40001/2"
    assert host_port("redis://cache.internal/0") == ("cache.internal", 6379)
    assert host_port("postgresql://u@db:6543/x") == ("db", 6543)


async def test_redis_through_the_proxy_fails_on_cut_and_recovers(
    redis_url: str, redis_prefix: str, fault_proxy: FaultProxyFactory
) -> None:
    proxy = await fault_proxy(*host_port(redis_url))
    client = aioredis.Redis.from_url(proxy.url_for(redis_url), socket_timeout=2)
    key = redis_prefix + "through-proxy"
    try:
        await client.set(key, b"v")

        proxy.cut()
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.get(key)

        proxy.restore()
        value = await client.get(key)
    finally:
        await client.aclose()

    assert value == b"v"
