"""The shared tier: entries, leases and invalidations in Redis, and the
subscription that keeps every replica's in-process tier coherent."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.cache import redis_scripts
from services.cache.coherence import (
    KIND_ROUTE,
    KIND_TAG,
    SEPARATOR,
    Selector,
    encode_invalidation,
)

logger = logging.getLogger(__name__)

# Every exception a Redis call may raise when Redis is cut, stalled or gone.
REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
INVALIDATION_LOG_CAPACITY = 100_000
# What grant_lease answers instead of a wait time when the value is already there.
FILLED = -1
_PING_INTERVAL_S = 0.5
_PONG_DEADLINE_S = 2.0
_FIELDS = ("v", "t", "s", "f", "x", "n", "d", "h")


@dataclass(frozen=True, slots=True)
class Record:
    """An entry as the shared tier holds it."""

    value: bytes
    tags: tuple[str, ...]
    stored_at_ms: int
    fresh_until_ms: int
    expires_at_ms: int
    version: int
    ttl_seconds: int
    digest: str


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    status: str  # OK, LEASE_LOST or LEASE_VOIDED
    ttl_seconds: int
    version: int


@dataclass(slots=True)
class InvalidationProgress:
    """An invalidation between its chunks: the index it drains and how far."""

    index: str
    args: list[Any]
    count: int
    cursor: str
    receivers: int


@dataclass(frozen=True, slots=True)
class StoreCommand:
    route_id: str
    key: str
    variant: str
    entry_id: str
    value: bytes
    tags: tuple[str, ...]
    now_ms: int
    ttl_seconds: int
    adapt_ttl: bool
    min_ttl_seconds: int
    max_ttl_seconds: int
    digest: str
    stale_window_seconds: int
    keep_extra_ttl: bool
    lease_token: str = ""


class RedisTier:
    """Redis operations of the cache; every call may raise one of REDIS_FAILURES."""

    def __init__(self, url: str, prefix: str, timeout_s: float, origin: str) -> None:
        self.prefix = prefix
        self.channel = prefix + "events"
        self.origin = origin
        # Monotonic time the subscription last proved it delivers everything
        # published before (confirmed, or answered a ping): whatever was
        # published later may have been missed once it is found broken.
        self.last_heard = time.monotonic()
        self._timeout_s = timeout_s
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=64,
        )
        self._grant = self._client.register_script(redis_scripts.GRANT_LEASE)
        self._store = self._client.register_script(redis_scripts.STORE)
        self._invalidate_first = self._client.register_script(
            redis_scripts.INVALIDATE_FIRST
        )
        self._invalidate_next = self._client.register_script(
            redis_scripts.INVALIDATE_NEXT
        )
        self._bulk_store = self._client.register_script(redis_scripts.BULK_STORE)
        self._prune = self._client.register_script(redis_scripts.PRUNE_INDEX)

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    async def close(self) -> None:
        with contextlib.suppress(*REDIS_FAILURES):
            await self._client.aclose()

    async def fetch(self, entry_id: str) -> Record | None:
        fields = await self._call(
            self._client.hmget(self.prefix + "e:" + entry_id, _FIELDS)
        )
        value, tags, stored, fresh, expires, version, ttl, digest = fields
        if value is None or fresh is None:
            return None
        return Record(
            value=value,
            tags=_split_tags(tags),
            stored_at_ms=int(stored),
            fresh_until_ms=int(float(fresh)),
            expires_at_ms=int(float(expires)),
            version=int(version),
            ttl_seconds=int(ttl),
            digest=(digest or b"").decode(),
        )

    async def grant_lease(
        self, entry_id: str, token_stem: str, timeout_ms: int
    ) -> tuple[str | None, int]:
        """(token, timeout) when granted; (None, ms the holder keeps it) when
        another caller holds it; (None, -1) when a fresh value is already stored."""
        p = self.prefix
        granted, detail = await self._call(
            self._grant(
                keys=[p + "l:" + entry_id, p + "seq", p + "e:" + entry_id],
                args=[token_stem, timeout_ms, int(time.time() * 1000)],
            )
        )
        if granted == 1:
            return detail.decode(), timeout_ms
        if granted == 2:
            return None, FILLED
        return None, max(int(detail), 0)

    async def store(self, command: StoreCommand) -> StoreOutcome:
        p = self.prefix
        keys = [
            p + "e:" + command.entry_id,
            p + "l:" + command.entry_id,
            p + "seq",
            p + "log",
            p + "r:" + command.route_id,
            p + "ver",
            *(p + "t:" + tag for tag in command.tags),
        ]
        args: list[Any] = [
            command.lease_token,
            command.route_id,
            command.key,
            command.key + SEPARATOR + command.variant,
            command.entry_id,
            command.value,
            SEPARATOR.join(command.tags),
            command.now_ms,
            command.ttl_seconds,
            "1" if command.adapt_ttl else "0",
            command.min_ttl_seconds,
            command.max_ttl_seconds,
            command.digest,
            command.stale_window_seconds,
            "1" if command.keep_extra_ttl else "0",
            p,
            self.channel,
            self.origin,
        ]
        status, ttl, version = await self._call(self._store(keys=keys, args=args))
        return StoreOutcome(status.decode(), int(ttl), int(version))

    async def invalidate(
        self, selector: Selector, now_ms: int, ack_id: str = "-", *, chunk: int = 500
    ) -> tuple[int, int]:
        """(entries reached, subscribers the invalidation was published to).

        A failure between chunks leaves the rest of a hard route or tag purge
        in its aside index; the next invalidation of that route or tag drains
        it first, so calling this again after a failure finishes the job.
        """
        progress = await self.start_invalidation(selector, now_ms, ack_id, chunk=chunk)
        while progress.cursor:
            await self.continue_invalidation(progress)
        return progress.count, progress.receivers

    async def start_invalidation(
        self, selector: Selector, now_ms: int, ack_id: str = "-", *, chunk: int = 500
    ) -> InvalidationProgress:
        """Numbers the invalidation and handles its first chunk (after draining
        what an unfinished purge of the same route or tag left aside)."""
        p = self.prefix
        args: list[Any] = [
            selector.kind,
            selector.route_id,
            selector.arg,
            "1" if selector.soft else "0",
            now_ms,
            p,
            chunk,
            "",
            INVALIDATION_LOG_CAPACITY,
            self.channel,
            encode_invalidation(self.origin, ack_id, selector),
        ]
        if selector.kind == KIND_TAG:
            index, aside = p + "t:" + selector.arg, p + "aside:t:" + selector.arg
        else:
            index, aside = (
                p + "r:" + selector.route_id,
                p + "aside:r:" + selector.route_id,
            )
        resumed = 0
        while True:
            count, cursor, receivers, seq = await self._call(
                self._invalidate_first(
                    keys=[
                        p + "seq",
                        p + "log",
                        p + "r:" + selector.route_id,
                        p + "t:" + selector.arg,
                        aside,
                    ],
                    args=args,
                )
            )
            if seq:
                break
            resumed += await self._drain(aside, selector, chunk)
        if selector.soft or selector.kind not in (KIND_ROUTE, KIND_TAG):
            # Only a hard purge of the same route or tag counts what it resumed.
            resumed = 0
        else:
            index = aside
        return InvalidationProgress(
            index, args, int(count) + resumed, _text(cursor), int(receivers)
        )

    async def continue_invalidation(self, progress: InvalidationProgress) -> None:
        """Handles the next chunk; `progress.cursor` is "" once the last is done."""
        progress.args[7] = progress.cursor
        reached, cursor, receivers, _ = await self._call(
            self._invalidate_next(keys=[progress.index], args=progress.args)
        )
        progress.count += int(reached)
        progress.cursor = _text(cursor)
        progress.receivers = int(receivers)

    async def _drain(self, aside: str, selector: Selector, chunk: int) -> int:
        """Removes every entry an aside index names, publishing nothing."""
        kind = KIND_TAG if selector.kind == KIND_TAG else KIND_ROUTE
        args: list[Any] = [kind, selector.route_id, selector.arg, "0", 0, self.prefix]
        args += [chunk, "+", INVALIDATION_LOG_CAPACITY, self.channel, ""]
        drained, cursor = 0, "+"
        while cursor:
            reached, next_cursor, _, _ = await self._call(
                self._invalidate_next(keys=[aside], args=args)
            )
            drained += int(reached)
            cursor = _text(next_cursor)
        return drained

    async def count_entries(self, route_id: str) -> int:
        return int(await self._call(self._client.zcard(self.prefix + "r:" + route_id)))

    async def publish(self, message: str) -> None:
        await self._call(self._client.publish(self.channel, message))

    async def bulk_store(
        self,
        route_id: str,
        items: Sequence[tuple[str, bytes] | tuple[str, bytes, Sequence[str]]],
        ttl_seconds: int,
        retention_ms: int,
        *,
        batch: int = 2000,
    ) -> int:
        """Stores (key, value) or (key, value, tags) items as Store would, but
        without vary or leases (warm-up loads)."""
        stored = 0
        now_ms = int(time.time() * 1000)
        keys = [self.prefix + "r:" + route_id, self.prefix + "ver"]
        head: list[Any] = [route_id, now_ms, ttl_seconds, retention_ms, self.prefix]
        head += [self.channel, self.origin]
        for start in range(0, len(items), batch):
            args = head + _bulk_entries(items[start : start + batch])
            stored += int(
                await self._call(
                    self._bulk_store(keys=keys, args=args),
                    timeout_s=max(self._timeout_s, 30.0),
                )
            )
        return stored

    async def prune_indexes(
        self, route_ids: Sequence[str], lock_ms: int, *, chunk: int = 500
    ) -> int:
        """Drops index members whose entries expired; returns how many.

        Entries leave by TTL without touching the route and tag indexes, so
        an active route's index would grow forever. One replica per period
        (a Redis lock) walks them in chunks, each chunk one short script.
        """
        p = self.prefix
        locked = await self._call(
            self._client.set(p + "janitor", self.origin, nx=True, px=lock_ms)
        )
        if not locked:
            return 0
        dropped = 0
        for route_id in route_ids:
            dropped += await self._prune_one(
                p + "r:" + route_id, p + "e:" + route_id + SEPARATOR, "z", chunk
            )
        cursor = 0
        while True:
            cursor, tag_keys = await self._call(
                self._client.scan(cursor, match=p + "t:*", count=chunk)
            )
            for tag_key in tag_keys:
                dropped += await self._prune_one(tag_key, p + "e:", "s", chunk)
            if int(cursor) == 0:
                return dropped

    async def _prune_one(
        self, index: str | bytes, entry_prefix: str, kind: str, chunk: int
    ) -> int:
        dropped, cursor = 0, b"0"
        while True:
            cursor, count = await self._call(
                self._prune(keys=[index], args=[cursor, chunk, entry_prefix, kind])
            )
            dropped += int(count)
            if cursor in (b"0", "0", 0):
                return dropped
            await asyncio.sleep(0)

    async def _call(self, call: Awaitable[Any], timeout_s: float | None = None) -> Any:
        # redis-py's own socket timeout does not bound a connect that hangs
        # behind a stalled proxy; this does.
        return await asyncio.wait_for(call, timeout_s or self._timeout_s * 2)

    async def subscribe_forever(
        self,
        on_message: Callable[[str], None],
        on_connected: Callable[[], Awaitable[None]],
        on_lost: Callable[[], None],
        restart: asyncio.Event,
    ) -> None:
        """Listens on the channel until cancelled, reconnecting after any loss.

        `on_connected` runs once the subscription is confirmed, before messages
        are handed over; `on_lost` runs when it breaks, is stalled (no pong to
        a ping), or `restart` is set by a failed data call.
        """
        backoff = 0.05
        while True:
            pubsub = self._client.pubsub()
            try:
                await self._confirm_subscription(pubsub)
                restart.clear()
                await on_connected()
                backoff = 0.05
                await self._pump(pubsub, on_message, restart)
            except REDIS_FAILURES as error:
                logger.warning(
                    "cache invalidation subscription lost: %s", type(error).__name__
                )
            except Exception:
                # A bug or a message no replica sent must not end the listener
                # silently: this replica would stop hearing invalidations.
                # Treated as a lost subscription, so L1 is dropped on return.
                logger.exception("cache invalidation listener failed; resubscribing")
            finally:
                with contextlib.suppress(*REDIS_FAILURES):
                    await asyncio.wait_for(pubsub.aclose(), self._timeout_s)
            on_lost()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _confirm_subscription(self, pubsub: aioredis.client.PubSub) -> None:
        await asyncio.wait_for(pubsub.subscribe(self.channel), self._timeout_s * 2)
        deadline = time.monotonic() + self._timeout_s * 2
        while time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=self._timeout_s)
            if message and message["type"] == "subscribe":
                self.last_heard = time.monotonic()
                return
        raise TimeoutError

    async def _pump(
        self,
        pubsub: aioredis.client.PubSub,
        on_message: Callable[[str], None],
        restart: asyncio.Event,
    ) -> None:
        last_pong = next_ping = time.monotonic()
        while not restart.is_set():
            now = time.monotonic()
            if now >= next_ping:
                await asyncio.wait_for(pubsub.ping(), self._timeout_s)
                next_ping = now + _PING_INTERVAL_S
            if now - last_pong > _PONG_DEADLINE_S:
                raise TimeoutError
            message = await asyncio.wait_for(
                pubsub.get_message(timeout=_PING_INTERVAL_S), _PING_INTERVAL_S * 2
            )
            if message is None:
                continue
            if message["type"] == "message":
                on_message(message["data"].decode(errors="replace"))
            elif message["type"] == "pong":
                last_pong = self.last_heard = time.monotonic()


def _bulk_entries(
    items: Sequence[tuple[str, bytes] | tuple[str, bytes, Sequence[str]]],
) -> list[Any]:
    """BULK_STORE's (member, value, tags joined, digest) arguments."""
    args: list[Any] = []
    for key, value, *tags in items:
        digest = hashlib.blake2b(value, digest_size=16).hexdigest()
        joined = SEPARATOR.join(sorted(set(tags[0]))) if tags else ""
        args.extend((key + SEPARATOR, value, joined, digest))
    return args


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _split_tags(raw: bytes | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(raw.decode().split(SEPARATOR))
