"""Two or more replicas sharing one Redis: coherence, stampedes, leases."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from empire.cache.v1 import cache_service_pb2 as pb
from services.cache.route_registry import RouteRegistry
from shared.clients import ServiceClient
from tests.cache.conftest import cache_settings, put_route, running_cache
from tests.harness.grpc_errors import error_info

pytestmark = pytest.mark.redis

HIT = pb.LOOKUP_RESULT_HIT
STALE = pb.LOOKUP_RESULT_STALE
MISS = pb.LOOKUP_RESULT_MISS


@contextlib.asynccontextmanager
async def replicas(
    count: int, database_url: str, redis_url: str, prefix: str, issuer, **overrides
) -> AsyncIterator[list[ServiceClient]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for index in range(count):
            settings = cache_settings(
                database_url,
                redis_url=redis_url,
                redis_prefix=prefix,
                replica_id=f"replica-{index}",
                **overrides,
            )
            clients.append(
                await stack.enter_async_context(running_cache(settings, issuer))
            )
        yield clients


def lookup(key: str, route_id: str = "api_offers", **fields) -> pb.LookupRequest:
    return pb.LookupRequest(route_id=route_id, key=key, **fields)


def store(
    key: str, value: bytes, route_id: str = "api_offers", **fields
) -> pb.StoreRequest:
    return pb.StoreRequest(route_id=route_id, key=key, value=value, **fields)


async def test_invalidation_on_one_replica_is_seen_by_the_others_next_lookup(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a)
        await a.Store(store("/api/offers/1", b"v1"))
        warm = await b.Lookup(lookup("/api/offers/1"))
        again = await b.Lookup(lookup("/api/offers/1"))
        await a.Invalidate(
            pb.InvalidateRequest(route_id="api_offers", key="/api/offers/1")
        )
        after = await b.Lookup(lookup("/api/offers/1"))

    assert (warm.tier, again.tier) == (pb.CACHE_TIER_L2, pb.CACHE_TIER_L1)
    assert after.result == MISS


async def test_garbage_on_the_channel_does_not_end_coherence(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    """Messages no replica sent (bad UTF-8, a digit int() cannot read) are
    passed over; invalidations that follow still reach the other replica."""
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a)
        await a.Store(store("/api/offers/1", b"v1"))
        await b.Lookup(lookup("/api/offers/1"))
        assert (await b.Lookup(lookup("/api/offers/1"))).tier == pb.CACHE_TIER_L1
        raw = aioredis.Redis.from_url(redis_url)
        try:
            for garbage in (b"\xff\xfe", "S\x1fx\x1f\u00b2\x1fk".encode()):
                await raw.publish(redis_prefix + "events", garbage)
        finally:
            await raw.aclose()
        await a.Store(store("/api/offers/1", b"v2"))
        await a.Invalidate(
            pb.InvalidateRequest(route_id="api_offers", key="/api/offers/1")
        )
        after = await b.Lookup(lookup("/api/offers/1"))

    assert after.result == MISS


async def test_store_on_one_replica_replaces_the_others_l1_copy(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a)
        await a.Store(store("/api/offers/1", b"old"))
        await b.Lookup(lookup("/api/offers/1"))
        await a.Store(store("/api/offers/1", b"new"))
        seen = b""
        for _ in range(100):
            seen = (await b.Lookup(lookup("/api/offers/1"))).value
            if seen == b"new":
                break
            await asyncio.sleep(0.01)

    assert seen == b"new"


async def test_stampede_across_replicas_produces_exactly_one_fill(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(
        3, sqlite_cache_url, redis_url, redis_prefix, issuer
    ) as clients:
        await put_route(clients[0])
        fills = 0

        async def caller(client: ServiceClient) -> bytes:
            nonlocal fills
            answer = await client.Lookup(
                lookup("/api/offers/hot", request_lease=True, max_wait_ms=10_000)
            )
            if answer.result == MISS:
                assert answer.lease_token, "a miss without a lease would hit the origin"
                fills += 1
                await asyncio.sleep(0.2)  # the origin is slow
                await client.Store(
                    store("/api/offers/hot", b"filled", lease_token=answer.lease_token)
                )
                return b"filled"
            return answer.value

        values = await asyncio.gather(*(caller(clients[i % 3]) for i in range(30)))
        stats = [await c.GetStats(pb.GetStatsRequest()) for c in clients]
        route_stats = await clients[1].GetStats(
            pb.GetStatsRequest(route_id="api_offers")
        )

    assert fills == 1
    assert set(values) == {b"filled"}
    assert sum(s.overall.leases_granted for s in stats) == 1
    assert sum(s.overall.lease_waits for s in stats) == 29
    assert route_stats.overall.shared_entries == 1
    assert route_stats.shared_tier_connected


async def test_filler_that_dies_blocks_others_only_until_the_lease_timeout(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(
        2, sqlite_cache_url, redis_url, redis_prefix, issuer, lease_timeout_seconds=0.3
    ) as (a, b):
        await put_route(a)
        dead = await a.Lookup(lookup("/api/offers/1", request_lease=True))
        # The holder never stores; the other replica's caller waits, then takes over.
        survivor = await b.Lookup(
            lookup("/api/offers/1", request_lease=True, max_wait_ms=5_000)
        )
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await a.Store(store("/api/offers/1", b"late", lease_token=dead.lease_token))
        await b.Store(
            store("/api/offers/1", b"fresh", lease_token=survivor.lease_token)
        )
        final = await a.Lookup(lookup("/api/offers/1"))

    assert dead.lease_token and survivor.lease_token
    assert survivor.result == MISS and survivor.waited_for_fill
    assert late.value.code() == grpc.StatusCode.ABORTED
    assert error_info(late.value).reason == "LEASE_LOST"
    assert final.value == b"fresh"


async def test_store_with_a_lease_voided_by_an_invalidation_is_refused(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a)
        lease = await a.Lookup(lookup("/api/offers/1", request_lease=True))
        # The origin changes while the fill is in flight; a purge by tag
        # reaches the key even though nothing is stored under it yet.
        await b.Invalidate(pb.InvalidateRequest(tag="offer:1"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.Store(
                store(
                    "/api/offers/1",
                    b"stale",
                    tags=["offer:1"],
                    lease_token=lease.lease_token,
                )
            )
        after = await b.Lookup(lookup("/api/offers/1", request_lease=True))

    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert error_info(refused.value).reason == "LEASE_VOIDED"
    assert after.result == MISS and after.lease_token


async def test_invalidation_of_other_keys_does_not_void_a_lease(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(1, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a,):
        await put_route(a)
        lease = await a.Lookup(lookup("/api/offers/1", request_lease=True))
        await a.Invalidate(pb.InvalidateRequest(tag="offer:2"))
        await a.Invalidate(pb.InvalidateRequest(route_id="api_offers", key_prefix="/x"))
        stored = await a.Store(
            store(
                "/api/offers/1", b"v", tags=["offer:1"], lease_token=lease.lease_token
            )
        )

    assert stored.stored


async def test_tag_purge_is_exact_across_replicas(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a)
        await put_route(a, route_id="api_users", route_pattern="/api/users/*")
        tagged = {
            ("api_offers", "o1"): ["red"],
            ("api_offers", "o2"): ["red", "blue"],
            ("api_users", "u1"): ["red"],
            ("api_offers", "o3"): ["blue"],
            ("api_users", "u2"): [],
        }
        for (route_id, key), tags in tagged.items():
            await a.Store(store(key, key.encode(), route_id=route_id, tags=tags))
            await b.Lookup(lookup(key, route_id=route_id))  # warm b's L1
        # Re-storing o3 without "red" must not leave it in red's index.
        await a.Store(store("o3", b"o3", tags=["blue"]))
        purged = await a.Invalidate(pb.InvalidateRequest(tag="red"))
        results = {
            (route_id, key): (await b.Lookup(lookup(key, route_id=route_id))).result
            for route_id, key in tagged
        }

    assert purged.invalidated_count == 3
    assert results == {
        ("api_offers", "o1"): MISS,
        ("api_offers", "o2"): MISS,
        ("api_users", "u1"): MISS,
        ("api_offers", "o3"): HIT,
        ("api_users", "u2"): HIT,
    }


async def test_prefix_and_route_invalidation(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a)
        for key in ("/api/offers/1", "/api/offers/10", "/api/offers/2", "/api/offer"):
            await a.Store(store(key, b"v"))
            await b.Lookup(lookup(key))
        by_prefix = await a.Invalidate(
            pb.InvalidateRequest(route_id="api_offers", key_prefix="/api/offers/1")
        )
        after_prefix = {
            key: (await b.Lookup(lookup(key))).result
            for key in (
                "/api/offers/1",
                "/api/offers/10",
                "/api/offers/2",
                "/api/offer",
            )
        }
        by_route = await a.Invalidate(pb.InvalidateRequest(route_id="api_offers"))
        after_route = (await b.Lookup(lookup("/api/offers/2"))).result

    assert by_prefix.invalidated_count == 2
    assert after_prefix == {
        "/api/offers/1": MISS,
        "/api/offers/10": MISS,
        "/api/offers/2": HIT,
        "/api/offer": HIT,
    }
    assert by_route.invalidated_count == 2
    assert after_route == MISS


async def test_soft_invalidation_serves_stale_while_one_caller_refills(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a, stale_while_revalidate_seconds=60)
        await a.Store(store("/api/offers/1", b"v1"))
        await b.Lookup(lookup("/api/offers/1"))
        await a.Invalidate(
            pb.InvalidateRequest(route_id="api_offers", key="/api/offers/1", soft=True)
        )
        first = await b.Lookup(lookup("/api/offers/1", request_lease=True))
        second = await a.Lookup(lookup("/api/offers/1", request_lease=True))
        await b.Store(store("/api/offers/1", b"v2", lease_token=first.lease_token))
        refreshed = await b.Lookup(lookup("/api/offers/1"))

    assert (first.result, first.value) == (STALE, b"v1")
    assert first.lease_token
    assert (second.result, second.value, second.lease_token) == (STALE, b"v1", "")
    assert (refreshed.result, refreshed.value) == (HIT, b"v2")


async def test_vary_on_values_split_entries_and_key_invalidation_reaches_all(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(1, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a,):
        await put_route(a, vary_on=["accept-language"])
        for lang in ("en", "fr"):
            await a.Store(
                store("/api/offers/1", lang.encode(), vary={"accept-language": lang})
            )
        en = await a.Lookup(
            lookup("/api/offers/1", vary={"accept-language": "en", "x": "1"})
        )
        fr = await a.Lookup(lookup("/api/offers/1", vary={"accept-language": "fr"}))
        purged = await a.Invalidate(
            pb.InvalidateRequest(route_id="api_offers", key="/api/offers/1")
        )
        gone = await a.Lookup(lookup("/api/offers/1", vary={"accept-language": "fr"}))

    assert (en.value, fr.value) == (b"en", b"fr")
    assert purged.invalidated_count == 2
    assert gone.result == MISS


async def test_route_created_on_one_replica_is_usable_on_another(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a, route_id="fresh_route")
        answer = await b.Lookup(lookup("k", route_id="fresh_route"))

    assert answer.result == MISS


async def test_invalidation_returns_after_a_slow_replica_applied_it(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    proxy = await fault_proxy(host, int(port))
    fast = cache_settings(
        sqlite_cache_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        replica_id="fast",
    )
    slow = cache_settings(
        sqlite_cache_url,
        redis_url=proxy.url_for(redis_url),
        redis_prefix=redis_prefix,
        replica_id="slow",
        redis_timeout_seconds=2.0,
    )
    async with running_cache(fast, issuer) as a, running_cache(slow, issuer) as b:
        await put_route(a)
        await a.Store(store("/api/offers/1", b"v1"))
        await b.Lookup(lookup("/api/offers/1"))
        proxy.slow(0.3)  # b hears of everything late
        await a.Invalidate(
            pb.InvalidateRequest(route_id="api_offers", key="/api/offers/1")
        )
        after = await b.Lookup(lookup("/api/offers/1"))
        proxy.restore()

    assert after.result == MISS


async def test_dynamic_ttl_adapts_in_the_shared_tier(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(
            a,
            policy=pb.CACHE_POLICY_DYNAMIC,
            ttl_seconds=100,
            min_ttl_seconds=10,
            max_ttl_seconds=300,
        )
        ttls = []
        for client, value in ((a, b"x"), (b, b"x"), (a, b"x"), (b, b"y")):
            ttls.append((await client.Store(store("k", value))).ttl_seconds)

    assert ttls == [100, 200, 300, 150]


async def test_dynamic_ttl_in_the_shared_tier_stays_within_its_bounds(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(1, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a,):
        await put_route(
            a,
            policy=pb.CACHE_POLICY_DYNAMIC,
            ttl_seconds=100,
            min_ttl_seconds=10,
            max_ttl_seconds=300,
        )
        await a.Store(store("long", b"x", ttl_seconds=10_000))
        await a.Store(store("short", b"x", ttl_seconds=1))
        halved = await a.Store(store("long", b"y"))
        doubled = await a.Store(store("short", b"x"))

    assert (halved.ttl_seconds, doubled.ttl_seconds) == (300, 10)


async def test_stats_count_shared_entries_of_routes_this_replica_never_served(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a)
        await a.Store(store("k", b"v"))
        await b.GetRouteConfig(pb.GetRouteConfigRequest(route_id="api_offers"))
        stats = await b.GetStats(pb.GetStatsRequest())

    assert stats.overall.shared_entries == 1
    assert [(r.route_id, r.stats.shared_entries) for r in stats.routes] == [
        ("api_offers", 1)
    ]


async def test_expired_entries_are_pruned_from_route_and_tag_indexes(
    sqlite_cache_url, redis_url, redis_prefix
):
    from services.cache.app import create_engine
    from services.cache.routes import route_from_proto
    from tests.cache.conftest import route_config

    settings = cache_settings(
        sqlite_cache_url, redis_url=redis_url, redis_prefix=redis_prefix
    )
    engine, db = await create_engine(settings)
    try:
        route = await engine.routes.put(route_from_proto(route_config()))
        await engine.store(route, "short", {}, b"v", ("red",), 1, "")
        await engine.store(route, "long", {}, b"v", ("red",), 600, "")
        await asyncio.sleep(1.1)
        dropped = await engine.prune_indexes()
        assert engine.shared_tier is not None
        client = engine.shared_tier.client
        route_members = await client.zrange(redis_prefix + "r:api_offers", 0, -1)
        tag_members = await client.smembers(redis_prefix + "t:red")
    finally:
        await engine.close()
        await db.close()

    assert dropped == 2
    assert route_members == [b"long\x1f"]
    assert tag_members == {b"api_offers\x1flong\x1f"}


async def test_late_callers_around_the_fill_never_refill(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    # A Redis call that a loaded machine delays past the timeout drops the
    # replica to local leases, which is a second fill by design: not this
    # test's subject, so the timeout is generous.
    async with replicas(
        2, sqlite_cache_url, redis_url, redis_prefix, issuer, redis_timeout_seconds=5.0
    ) as clients:
        await put_route(clients[0])
        fills: dict[str, int] = {}
        rng = random.Random(5)

        async def caller(client: ServiceClient, key: str, delay: float) -> None:
            await asyncio.sleep(delay)
            answer = await client.Lookup(
                lookup(key, request_lease=True, max_wait_ms=10_000)
            )
            if answer.result == MISS:
                fills[key] = fills.get(key, 0) + 1
                await asyncio.sleep(0.05)
                await client.Store(store(key, b"v", lease_token=answer.lease_token))

        # Callers keep arriving while the fill lands, so some look just
        # before it and ask for the lease just after it.
        await asyncio.gather(
            *(
                caller(clients[i % 2], f"key-{i % 10}", rng.uniform(0, 0.1))
                for i in range(200)
            )
        )

    assert fills == {f"key-{i}": 1 for i in range(10)}


async def test_route_deleted_on_one_replica_is_refused_by_the_other(
    sqlite_cache_url, redis_url, redis_prefix, issuer
):
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a)
        await a.Store(store("k", b"v"))
        await b.Lookup(lookup("k"))  # b knows the route and holds the entry
        deleted = await a.DeleteRouteConfig(
            pb.DeleteRouteConfigRequest(route_id="api_offers")
        )
        code = None
        for _ in range(100):
            try:
                await b.Lookup(lookup("k"))
            except grpc.aio.AioRpcError as error:
                code = error.code()
                break
            await asyncio.sleep(0.02)

    assert deleted.invalidated_count == 1
    assert code == grpc.StatusCode.NOT_FOUND


async def test_route_deleted_while_another_replica_stores_comes_back_empty(
    sqlite_cache_url, redis_url, redis_prefix, issuer, monkeypatch
):
    """What a replica stores between the delete's purge and the delete itself
    is purged too, so the route id created again starts empty."""
    async with replicas(2, sqlite_cache_url, redis_url, redis_prefix, issuer) as (a, b):
        await put_route(a)
        await b.Lookup(lookup("/api/offers/1"))  # b knows the route
        delete = RouteRegistry.delete

        async def delete_after_a_late_store(registry, route_id):  # type: ignore[no-untyped-def]
            await b.Store(store("/api/offers/1", b"late"))
            return await delete(registry, route_id)

        monkeypatch.setattr(RouteRegistry, "delete", delete_after_a_late_store)
        await a.DeleteRouteConfig(pb.DeleteRouteConfigRequest(route_id="api_offers"))
        monkeypatch.setattr(RouteRegistry, "delete", delete)

        await put_route(a)
        answer = await a.Lookup(lookup("/api/offers/1"))

    assert answer.result == MISS
