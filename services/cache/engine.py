"""The cache itself: lookups, stores and invalidations over the two tiers.

The in-process tier (L1) answers first. The shared tier (L2, Redis) holds what
every replica sees; each store and invalidation is published so that the other
replicas drop their L1 copies. While the subscription is lost this replica
cannot know what it missed: it keeps serving L1 entries for at most
`disconnected_max_age_s` after the subscription last answered a ping (or after
their local store, if later), and on reconnect clears L1 before it uses Redis
again. An invalidation it cannot hand to Redis is applied to its own L1 and
refused as UNAVAILABLE, never acknowledged: the other replicas and Redis still
hold the entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any

from services.cache.coherence import (
    KIND_KEY,
    KIND_PREFIX,
    KIND_TAG,
    Acknowledged,
    CoherenceLog,
    ConfigChanged,
    Invalidated,
    Selector,
    Stored,
    StoredMany,
    decode,
    encode_ack,
    encode_config_change,
    entry_id,
)
from services.cache.l1 import L1Cache, L1Entry
from services.cache.leases import LeaseToken, LocalLeases, parse_token, token_stem
from services.cache.route_registry import RouteRegistry
from services.cache.routes import Freshness, Policy, Route, adapt_ttl
from services.cache.shared_tier import FILLED, REDIS_FAILURES, RedisTier, StoreCommand
from services.cache.stats import (
    L1_BYTES,
    L1_ENTRIES,
    L1_EVICTIONS,
    SHARED_TIER_UP,
    CacheStats,
)
from shared.errors import Aborted, InvalidArgument, Unavailable

logger = logging.getLogger(__name__)

_LOG_CAPACITY = 65_536
_FIRST_CONNECT_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class LookupAnswer:
    result: str  # "hit", "stale" or "miss"
    value: bytes = b""
    age_ms: int = 0
    tags: tuple[str, ...] = ()
    lease_token: str = ""
    lease_timeout_ms: int = 0
    waited: bool = False
    tier: str = "none"  # "l1", "l2" or "none"
    ttl_remaining_ms: int = 0


MISS = LookupAnswer("miss")


@dataclass(frozen=True, slots=True)
class _Write:
    """One store on its way to the tiers."""

    route: Route
    key: str
    variant: str
    ident: str
    value: bytes
    tags: tuple[str, ...]
    now_ms: int
    digest: str
    # The coherence log position before the write: L1 takes the value only if
    # nothing newer arrived since.
    since: int


class _AckWait:
    """Counts acknowledgements of one invalidation from the other replicas."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self._received = 0
        self._expected: int | None = None

    def expect(self, count: int) -> None:
        self._expected = count
        self._check()

    def received(self) -> None:
        self._received += 1
        self._check()

    def _check(self) -> None:
        if self._expected is not None and self._received >= self._expected:
            self.done.set()


class _FillWait:
    """Callers waiting for one entry's fill; the store that fills it wakes them."""

    def __init__(self) -> None:
        self.filled = asyncio.Event()
        self.waiters = 0


def variant_of(route: Route, vary: Mapping[str, str]) -> str:
    """A digest of the values of the route's vary-on names; "" when it has none."""
    if not route.vary_on:
        return ""
    digest = hashlib.blake2b(digest_size=8)
    for name in route.vary_on:
        digest.update(name.encode() + b"\0" + vary.get(name, "").encode() + b"\0")
    return digest.hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


class CacheEngine:
    def __init__(
        self,
        *,
        replica_id: str,
        routes: RouteRegistry,
        l1_max_bytes: int,
        lease_timeout_s: float,
        disconnected_max_age_s: float,
        tier: RedisTier | None = None,
        ack_timeout_s: float = 1.0,
        janitor_interval_s: float = 60.0,
    ) -> None:
        self.replica_id = replica_id
        self.routes = routes
        self.stats = CacheStats()
        self._l1 = L1Cache(l1_max_bytes)
        self._tier = tier
        self._lease_timeout_ms = int(lease_timeout_s * 1000)
        self._disconnected_max_age_s = disconnected_max_age_s
        self._leases = LocalLeases(replica_id, lease_timeout_s)
        self._log = CoherenceLog(_LOG_CAPACITY)
        self._fills: dict[str, _FillWait] = {}
        # Route changes the other replicas have not been told of (Redis was
        # away); published once it is back.
        self._unpublished_routes: set[str] = set()
        self._shared_up = False
        self._lost_at: float | None = time.monotonic()
        self._restart = asyncio.Event()
        self._connected = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._max_version = 0
        self._acks: dict[str, _AckWait] = {}
        self._ack_timeout_s = ack_timeout_s
        self._janitor_interval_s = janitor_interval_s

    @property
    def shared_tier_up(self) -> bool:
        return self._shared_up

    @property
    def l1(self) -> L1Cache:
        return self._l1

    @property
    def shared_tier(self) -> RedisTier | None:
        return self._tier

    async def start(self) -> None:
        """Subscribes to the shared tier, waiting briefly for the first connection."""
        if self._tier is None:
            return
        self._listener = asyncio.create_task(
            self._tier.subscribe_forever(
                self._on_message, self._on_connected, self._on_lost, self._restart
            )
        )
        self._spawn(self._janitor())
        try:
            await asyncio.wait_for(self._connected.wait(), _FIRST_CONNECT_WAIT_S)
        except TimeoutError:
            logger.warning(
                "cache starts without its shared tier; retrying in background"
            )

    async def close(self) -> None:
        tasks = [self._listener, *self._background] if self._listener else []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *REDIS_FAILURES):
                await task
        if self._tier is not None:
            await self._tier.close()

    async def lookup(
        self,
        route: Route,
        key: str,
        vary: Mapping[str, str],
        *,
        request_lease: bool = False,
        max_wait_ms: int = 0,
        origin_failed: bool = False,
    ) -> LookupAnswer:
        started = time.perf_counter()
        answer = MISS
        if route.stores:
            ident = entry_id(route.route_id, key, variant_of(route, vary))
            answer = await self._find(route, key, ident, origin_failed)
            if request_lease and answer.result == "miss":
                answer = await self._lease_or_wait(
                    route, key, ident, max_wait_ms, origin_failed
                )
            elif request_lease and answer.result == "stale" and not origin_failed:
                # Stale-while-revalidate: one caller refills, the rest get stale.
                token, timeout_ms = await self._grant(route, ident)
                if token is not None:
                    answer = replace(
                        answer, lease_token=token, lease_timeout_ms=timeout_ms
                    )
        self.stats.record_lookup(
            route.route_id, answer.result, answer.tier, time.perf_counter() - started
        )
        return answer

    async def store(
        self,
        route: Route,
        key: str,
        vary: Mapping[str, str],
        value: bytes,
        tags: tuple[str, ...],
        ttl_override: int | None,
        lease_token: str,
    ) -> tuple[bool, int]:
        """(stored, TTL seconds). Raises Aborted when the lease was lost or voided."""
        if not route.stores:
            return False, 0
        token = _parse_lease(lease_token)
        variant = variant_of(route, vary)
        write = _Write(
            route=route,
            key=key,
            variant=variant,
            ident=entry_id(route.route_id, key, variant),
            value=value,
            tags=tags,
            now_ms=_now_ms(),
            digest=hashlib.blake2b(value, digest_size=16).hexdigest(),
            since=self._log.seq,
        )
        ttl = route.ttl_seconds if ttl_override is None else ttl_override
        adapt = route.policy is Policy.DYNAMIC and ttl_override is None
        try:
            self._check_lease(write, token)
            if self._shared_up and (token is None or token.shared):
                stored = await self._store_shared(write, ttl, adapt, token)
                if stored is not None:
                    ttl, version = stored
                    self._put_l1(write, ttl, version)
                    return True, ttl
                if token is not None:
                    self._check_shared_lease_locally(write, token)
            return True, self._store_local(write, ttl, adapt)
        finally:
            self._wake(write.ident)

    async def invalidate(self, selector: Selector) -> int:
        """Invalidates on every replica; the count is of shared entries reached.

        Returns once Redis applied it and every other subscribed replica
        acknowledged it (or the ack timeout passed), so the next lookup
        anywhere sees it. When Redis cannot be reached (or fails part way)
        this replica's L1 still drops the entries, and Unavailable is raised:
        the other replicas, and replicas started later, would serve them, so
        the caller must retry (an invalidation may be repeated safely).
        """
        if self._tier is None:
            return self._apply(selector)
        if not self._shared_up:
            self._apply(selector)
            raise _shared_tier_unavailable()
        ack_id = secrets.token_hex(8)
        acks = self._acks[ack_id] = _AckWait()
        try:
            count, receivers = await self._tier.invalidate(selector, _now_ms(), ack_id)
            # This replica's own subscription is one of the receivers.
            acks.expect(receivers - 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(acks.done.wait(), self._ack_timeout_s)
        except REDIS_FAILURES:
            self._shared_failed()
            self._apply(selector)
            raise _shared_tier_unavailable() from None
        finally:
            del self._acks[ack_id]
        # After Redis, so that a lookup racing this one cannot put back in L1
        # a value it read before the purge.
        self._apply(selector)
        return count

    async def publish_config_change(self, route_id: str) -> None:
        """Tells the other replicas to reload `route_id` from the store.

        The change is already stored, so the call succeeds even without Redis;
        the news goes out when this replica reconnects.
        """
        if self._tier is None:
            return
        if self._shared_up:
            try:
                await self._tier.publish(
                    encode_config_change(self.replica_id, route_id)
                )
                return
            except REDIS_FAILURES:
                self._shared_failed()
        self._unpublished_routes.add(route_id)

    async def _publish_pending_changes(self) -> None:
        pending, self._unpublished_routes = self._unpublished_routes, set()
        for route_id in sorted(pending):
            await self.publish_config_change(route_id)

    def route_usage(self, route_id: str | None) -> tuple[int, int]:
        """(entries, bytes) of this replica's L1, for one route or all."""
        if route_id is None:
            return len(self._l1), self._l1.bytes
        ids = self._l1.entry_ids(route_id)
        sizes = [entry.size for ident in ids if (entry := self._l1.peek(ident))]
        return len(sizes), sum(sizes)

    async def shared_entries(self, route_id: str) -> int:
        """Entries the shared tier indexes for the route; 0 when it is unreachable."""
        if not self._shared_up or self._tier is None:
            return 0
        try:
            return await self._tier.count_entries(route_id)
        except REDIS_FAILURES:
            self._shared_failed()
            return 0

    def refresh_gauges(self) -> None:
        L1_ENTRIES.set(len(self._l1))
        L1_BYTES.set(self._l1.bytes)
        L1_EVICTIONS.set(self._l1.evictions)
        SHARED_TIER_UP.set(1 if self._shared_up else 0)

    async def _find(
        self, route: Route, key: str, ident: str, origin_failed: bool
    ) -> LookupAnswer:
        now_ms = _now_ms()
        entry = self._l1_get(ident, now_ms)
        if entry is not None:
            return _answer(route, entry, "l1", now_ms, origin_failed)
        if not self._shared_up or self._tier is None:
            return MISS
        since = self._log.seq
        try:
            record = await self._tier.fetch(ident)
        except REDIS_FAILURES:
            self._shared_failed()
            return MISS
        if record is None:
            return MISS
        self._max_version = max(self._max_version, record.version)
        entry = L1Entry(
            ident,
            route.route_id,
            key,
            record.value,
            record.tags,
            record.stored_at_ms,
            record.fresh_until_ms,
            record.expires_at_ms,
            time.monotonic(),
            version=record.version,
            ttl_seconds=record.ttl_seconds,
            digest=record.digest,
        )
        self._insert(entry, since)
        return _answer(route, entry, "l2", now_ms, origin_failed)

    def _l1_get(self, ident: str, now_ms: int) -> L1Entry | None:
        entry = self._l1.get(ident, now_ms)
        if entry is None or self._lost_at is None or self._tier is None:
            return entry
        # NOTE: staleness bound while invalidations cannot reach this replica.
        if (
            time.monotonic() - max(self._lost_at, entry.loaded_at)
            > self._disconnected_max_age_s
        ):
            self._l1.remove(ident)
            return None
        return entry

    async def _lease_or_wait(
        self, route: Route, key: str, ident: str, max_wait_ms: int, origin_failed: bool
    ) -> LookupAnswer:
        wait_s = (max_wait_ms or self._lease_timeout_ms) / 1000
        deadline = time.monotonic() + wait_s
        waited = False
        while True:
            token, remaining_ms = await self._grant(route, ident)
            if token is not None:
                return LookupAnswer(
                    "miss",
                    lease_token=token,
                    lease_timeout_ms=remaining_ms,
                    waited=waited,
                )
            if remaining_ms == FILLED:
                # Filled between our look and the grant: read it, do not refill.
                # Any L1 copy is older than that fill, so it goes.
                self._l1.remove(ident)
                answer = await self._find(route, key, ident, origin_failed)
                if answer.result != "miss":
                    return replace(answer, waited=waited)
                if time.monotonic() >= deadline:
                    return LookupAnswer("miss", waited=waited)
                continue
            if not waited:
                self.stats.record_event(route.route_id, "lease_wait")
                waited = True
            fill = self._fills.get(ident)
            if fill is None:
                fill = self._fills[ident] = _FillWait()
            fill.waiters += 1
            try:
                outcome = await self._wait_for_fill(
                    route, key, ident, fill, deadline, remaining_ms, origin_failed
                )
            finally:
                self._leave_fill(ident, fill)
            if outcome is not None:
                return outcome

    async def _wait_for_fill(
        self,
        route: Route,
        key: str,
        ident: str,
        fill: _FillWait,
        deadline: float,
        remaining_ms: int,
        origin_failed: bool,
    ) -> LookupAnswer | None:
        """The answer once the holder's fill lands or the wait is over; None
        when the lease may have lapsed and the caller should try for it."""
        # Checked after registering, so a fill landing in between is not missed.
        answer = await self._find(route, key, ident, origin_failed)
        if answer.result != "miss":
            return replace(answer, waited=True)
        left = deadline - time.monotonic()
        if left <= 0:
            return LookupAnswer("miss", waited=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                fill.filled.wait(), min(left, remaining_ms / 1000 + 0.005)
            )
        answer = await self._find(route, key, ident, origin_failed)
        if answer.result != "miss":
            return replace(answer, waited=True)
        return None

    def _leave_fill(self, ident: str, fill: _FillWait) -> None:
        # The last waiter out unregisters: a fill that never comes (a failing
        # origin, a filler that died) must not leave its key behind for good.
        fill.waiters -= 1
        if fill.waiters == 0 and self._fills.get(ident) is fill:
            del self._fills[ident]

    async def _grant(self, route: Route, ident: str) -> tuple[str | None, int]:
        if self._shared_up and self._tier is not None:
            try:
                token, ms = await self._tier.grant_lease(
                    ident,
                    token_stem(self.replica_id, self._log.seq),
                    self._lease_timeout_ms,
                )
            except REDIS_FAILURES:
                self._shared_failed()
            else:
                if token is not None:
                    self.stats.record_event(route.route_id, "lease_granted")
                return token, ms
        token, ms = self._leases.acquire(ident, self._log.seq)
        if token is not None:
            self.stats.record_event(route.route_id, "lease_granted")
        return token, ms

    def _check_shared_lease_locally(self, write: _Write, token: LeaseToken) -> None:
        """Vouches for a shared lease without Redis, which only the replica
        that granted it can: raises Aborted, as Redis would, when it heard of
        an invalidation reaching the key since, or cannot tell."""
        if token.replica_id != self.replica_id:
            raise self._unverifiable_lease(write)
        if self._log.voids(
            token.local_seq, write.route.route_id, write.key, write.tags
        ):
            self.stats.record_event(write.route.route_id, "voided_store")
            raise _lease_voided()

    def _check_local_lease(self, write: _Write, token: LeaseToken) -> None:
        if not self._leases.release(write.ident, token.text):
            raise _lease_lost()
        if self._log.voids(
            token.local_seq, write.route.route_id, write.key, write.tags
        ):
            self.stats.record_event(write.route.route_id, "voided_store")
            raise _lease_voided()

    def _check_lease(self, write: _Write, token: LeaseToken | None) -> None:
        """Raises Aborted for a lost or voided lease, or one that cannot be checked."""
        if token is None:
            return
        if not token.shared:
            self._check_local_lease(write, token)
            if self._shared_up:
                # A lease granted while the shared tier was away: its fill may
                # predate invalidations this replica never heard of.
                raise self._unverifiable_lease(write)
        elif not self._shared_up:
            self._check_shared_lease_locally(write, token)

    def _unverifiable_lease(self, write: _Write) -> Aborted:
        # Refused as voided, the answer the proto gives a leased store that
        # must not land: `stored` is false for NO_CACHE routes alone.
        self.stats.record_event(write.route.route_id, "voided_store")
        return Aborted(
            "this replica cannot check the fill lease against the invalidations"
            " it may have missed while the shared tier was unreachable",
            reason="LEASE_VOIDED",
        )

    async def _store_shared(
        self, write: _Write, ttl: int, adapt: bool, token: LeaseToken | None
    ) -> tuple[int, int] | None:
        """(ttl, version) once stored in Redis; None when Redis failed."""
        assert self._tier is not None
        route = write.route
        command = StoreCommand(
            route.route_id,
            write.key,
            write.variant,
            write.ident,
            write.value,
            write.tags,
            write.now_ms,
            ttl,
            adapt,
            route.min_ttl_seconds,
            route.max_ttl_seconds,
            write.digest,
            max(route.stale_while_revalidate_seconds, route.stale_if_error_seconds),
            route.policy is Policy.DYNAMIC,
            token.text if token else "",
        )
        try:
            outcome = await self._tier.store(command)
        except REDIS_FAILURES:
            self._shared_failed()
            return None
        if outcome.status == "LEASE_LOST":
            raise _lease_lost()
        if outcome.status == "LEASE_VOIDED":
            self.stats.record_event(route.route_id, "voided_store")
            raise _lease_voided()
        self._max_version = max(self._max_version, outcome.version)
        return outcome.ttl_seconds, outcome.version

    def _store_local(self, write: _Write, ttl: int, adapt: bool) -> int:
        """Stores in L1 alone (no shared tier, or it is away); returns the TTL."""
        if adapt:
            previous = self._l1.peek(write.ident)
            if previous is not None:
                changed = previous.digest != write.digest
                ttl = adapt_ttl(previous.ttl_seconds, changed, write.route)
        self._max_version += 1
        self._put_l1(write, ttl, self._max_version)
        return ttl

    def _put_l1(self, write: _Write, ttl: int, version: int) -> None:
        route = write.route
        entry = L1Entry(
            write.ident,
            route.route_id,
            write.key,
            write.value,
            write.tags,
            write.now_ms,
            write.now_ms + ttl * 1000,
            write.now_ms + route.retention_ms(ttl),
            time.monotonic(),
            version=version,
            ttl_seconds=ttl,
            digest=write.digest,
        )
        self._insert(entry, write.since)
        self.stats.record_event(route.route_id, "store")

    def _insert(self, entry: L1Entry, since: int) -> None:
        """Puts `entry` in L1 unless something newer arrived since it was read."""
        current = self._l1.peek(entry.entry_id)
        if current is not None and current.version > entry.version:
            return
        if not self._log.may_insert(
            since, entry.entry_id, entry.route_id, entry.key, entry.tags, entry.version
        ):
            return
        self._l1.put(entry)

    def _apply(self, selector: Selector) -> int:
        if selector.kind == KIND_TAG:
            ids = self._l1.tagged(selector.arg)
        elif selector.kind == KIND_KEY:
            ids = self._l1.entry_ids(selector.route_id, key=selector.arg)
        elif selector.kind == KIND_PREFIX:
            ids = self._l1.entry_ids(selector.route_id, key_prefix=selector.arg)
        else:
            ids = self._l1.entry_ids(selector.route_id)
        now_ms = _now_ms()
        for ident in ids:
            if selector.soft:
                entry = self._l1.peek(ident)
                if entry is not None:
                    entry.fresh_until_ms = min(entry.fresh_until_ms, now_ms)
            else:
                self._l1.remove(ident)
        self._log.append(selector)
        return len(ids)

    def _wake(self, ident: str) -> None:
        fill = self._fills.pop(ident, None)
        if fill is not None:
            fill.filled.set()

    def _on_message(self, raw: str) -> None:
        decoded = decode(raw)
        if decoded is None:
            return
        origin, event = decoded
        if origin == self.replica_id:
            return
        if isinstance(event, Invalidated):
            self._apply(event.selector)
            if event.ack_id != "-":
                self._spawn(self._acknowledge(event.ack_id))
        elif isinstance(event, Acknowledged):
            waiting = self._acks.get(event.ack_id)
            if waiting is not None:
                waiting.received()
        elif isinstance(event, Stored):
            self._on_stored(event)
        elif isinstance(event, StoredMany):
            for stored in event.each():
                self._on_stored(stored)
        elif isinstance(event, ConfigChanged):
            self._spawn(self._reload_route(event.route_id))

    async def _on_connected(self) -> None:
        # Invalidations made elsewhere while this replica was away never
        # reached it, so nothing it holds can be trusted any longer.
        self._l1.clear()
        self._shared_up = True
        self._lost_at = None
        self._connected.set()
        SHARED_TIER_UP.set(1)
        self._spawn(self._reload_routes())
        self._spawn(self._publish_pending_changes())
        logger.info("cache shared tier connected; L1 cleared")

    def _on_lost(self) -> None:
        if self._shared_up:
            logger.warning("cache shared tier lost; serving L1 with bounded staleness")
        self._shared_up = False
        self._connected.clear()
        if self._lost_at is None:
            # From the subscription's last sign of life, not from now: what
            # was published since may already be missed, and a stall is only
            # noticed seconds later.
            now = time.monotonic()
            self._lost_at = min(now, self._tier.last_heard) if self._tier else now
        SHARED_TIER_UP.set(0)

    def _shared_failed(self) -> None:
        if self._shared_up:
            logger.warning("a Redis call failed or timed out; reconnecting")
        self._on_lost()
        self._restart.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_stored(self, event: Stored) -> None:
        self._log.append(event)
        current = self._l1.peek(event.entry_id)
        if current is not None and current.version < event.version:
            self._l1.remove(event.entry_id)
        self._wake(event.entry_id)

    async def prune_indexes(self) -> int:
        """Drops expired entries from the shared indexes (when this replica's turn)."""
        if not self._shared_up or self._tier is None:
            return 0
        try:
            return await self._tier.prune_indexes(
                self.routes.route_ids(), int(self._janitor_interval_s * 1000)
            )
        except REDIS_FAILURES:
            self._shared_failed()
            return 0

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(self._janitor_interval_s)
            dropped = await self.prune_indexes()
            if dropped:
                logger.info("pruned %s expired entries from the indexes", dropped)

    async def _acknowledge(self, ack_id: str) -> None:
        if self._tier is None:
            return
        try:
            await self._tier.publish(encode_ack(self.replica_id, ack_id))
        except REDIS_FAILURES:
            self._shared_failed()

    async def _reload_route(self, route_id: str) -> None:
        try:
            await self.routes.refresh(route_id)
        except Exception:
            logger.warning("cannot reload route %s after a change elsewhere", route_id)

    async def _reload_routes(self) -> None:
        try:
            await self.routes.load()
        except Exception:
            logger.warning("cannot reload route configs after reconnecting")


def _parse_lease(text: str) -> LeaseToken | None:
    if not text:
        return None
    token = parse_token(text)
    if token is None:
        raise InvalidArgument(
            "lease_token", "is not a token this service issued", reason="INVALID_LEASE"
        )
    return token


def _lease_lost() -> Aborted:
    return Aborted(
        "the fill lease expired or passed to another caller", reason="LEASE_LOST"
    )


def _shared_tier_unavailable() -> Unavailable:
    return Unavailable(
        "the shared tier is unreachable: this replica dropped its copies but the"
        " others still serve them; retry the invalidation",
        reason="SHARED_TIER_UNAVAILABLE",
    )


def _lease_voided() -> Aborted:
    return Aborted(
        "an invalidation voided the fill lease; the value was not stored",
        reason="LEASE_VOIDED",
    )


def _answer(
    route: Route, entry: L1Entry, tier: str, now_ms: int, origin_failed: bool
) -> LookupAnswer:
    freshness = route.freshness(entry.fresh_until_ms, now_ms, origin_failed)
    if freshness is Freshness.EXPIRED:
        return MISS
    return LookupAnswer(
        "hit" if freshness is Freshness.FRESH else "stale",
        value=entry.value,
        age_ms=max(0, now_ms - entry.stored_at_ms),
        tags=entry.tags,
        tier=tier,
        ttl_remaining_ms=entry.fresh_until_ms - now_ms,
    )
