"""Redis cut or stalled between a replica and its shared tier (fault proxy)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from empire.cache.v1 import cache_service_pb2 as pb
from services.cache.settings import CacheSettings
from shared.clients import ServiceClient
from tests.cache.conftest import cache_settings, put_route, running_cache
from tests.harness.grpc_errors import error_info

pytestmark = pytest.mark.redis

HIT = pb.LOOKUP_RESULT_HIT
MISS = pb.LOOKUP_RESULT_MISS


def lookup(key: str) -> pb.LookupRequest:
    return pb.LookupRequest(route_id="api_offers", key=key)


def store(key: str, value: bytes) -> pb.StoreRequest:
    return pb.StoreRequest(route_id="api_offers", key=key, value=value)


def invalidate(key: str) -> pb.InvalidateRequest:
    return pb.InvalidateRequest(route_id="api_offers", key=key)


async def wait_for_shared_tier(client: ServiceClient, connected: bool) -> None:
    for _ in range(200):
        stats = await client.GetStats(pb.GetStatsRequest())
        if stats.shared_tier_connected == connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"shared tier never became connected={connected}")


async def proxied(fault_proxy, redis_url: str):
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    return await fault_proxy(host, int(port))


async def test_redis_cut_serves_l1_and_recovers_without_serving_invalidated_entries(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    proxy = await proxied(fault_proxy, redis_url)
    cut_settings = cache_settings(
        sqlite_cache_url,
        redis_url=proxy.url_for(redis_url),
        redis_prefix=redis_prefix,
        replica_id="behind-proxy",
        l1_disconnected_max_age_seconds=60.0,
    )
    direct_settings = cache_settings(
        sqlite_cache_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        replica_id="direct",
    )
    async with (
        running_cache(cut_settings, issuer) as a,
        running_cache(direct_settings, issuer) as b,
    ):
        await put_route(b)
        for key in ("k1", "k2", "k3"):
            await b.Store(store(key, b"before"))
            await a.Lookup(lookup(key))  # a holds them in L1

        proxy.cut()
        during = [await a.Lookup(lookup(key)) for key in ("k1", "k2")]
        stored_during = await a.Store(store("k4", b"during"))
        k4_during = await a.Lookup(lookup("k4"))
        await b.Invalidate(invalidate("k1"))

        proxy.restore()
        await wait_for_shared_tier(a, True)
        after = {
            key: (await a.Lookup(lookup(key))).result for key in ("k1", "k2", "k3")
        }

    assert [answer.result for answer in during] == [HIT, HIT]
    assert stored_during.stored and k4_during.result == HIT
    # k1 was purged elsewhere during the cut: it does not come back.
    assert after == {"k1": MISS, "k2": HIT, "k3": HIT}


async def test_invalidate_on_a_cut_off_replica_is_refused_until_a_retry_lands(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    proxy = await proxied(fault_proxy, redis_url)

    def settings(url: str, replica_id: str) -> CacheSettings:
        return cache_settings(
            sqlite_cache_url,
            redis_url=url,
            redis_prefix=redis_prefix,
            replica_id=replica_id,
            l1_disconnected_max_age_seconds=60.0,
        )

    cut_off = settings(proxy.url_for(redis_url), "behind-proxy")
    async with (
        running_cache(cut_off, issuer) as a,
        running_cache(settings(redis_url, "direct"), issuer) as b,
    ):
        await put_route(b)
        await b.Store(store("k1", b"old"))
        await a.Lookup(lookup("k1"))
        await b.Lookup(lookup("k1"))  # both hold it in L1

        proxy.cut()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.Invalidate(invalidate("k1"))
        on_a = await a.Lookup(lookup("k1"))
        on_b = await b.Lookup(lookup("k1"))
        async with running_cache(settings(redis_url, "started-later"), issuer) as c:
            on_c = await c.Lookup(lookup("k1"))

        proxy.restore()
        await wait_for_shared_tier(a, True)
        retried = await a.Invalidate(invalidate("k1"))
        after = [(await client.Lookup(lookup("k1"))).result for client in (a, b)]
        async with running_cache(settings(redis_url, "started-last"), issuer) as d:
            after.append((await d.Lookup(lookup("k1"))).result)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(refused.value).reason == "SHARED_TIER_UNAVAILABLE"
    # The cut-off replica stops serving it at once...
    assert on_a.result == MISS
    # ...but the caller was not told it was done, and it was not: nothing
    # elsewhere was purged, on a running replica or on one started after.
    assert (on_b.result, on_b.value) == (HIT, b"old")
    assert (on_c.result, on_c.value) == (HIT, b"old")
    assert retried.invalidated_count == 1
    assert after == [MISS, MISS, MISS]


async def test_route_delete_on_a_cut_off_replica_keeps_the_config_for_a_retry(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    proxy = await proxied(fault_proxy, redis_url)
    settings = cache_settings(
        sqlite_cache_url,
        redis_url=proxy.url_for(redis_url),
        redis_prefix=redis_prefix,
    )
    delete = pb.DeleteRouteConfigRequest(route_id="api_offers")
    async with running_cache(settings, issuer) as a:
        await put_route(a)
        await a.Store(store("k1", b"v"))

        proxy.cut()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.DeleteRouteConfig(delete)
        kept = await a.GetRouteConfig(pb.GetRouteConfigRequest(route_id="api_offers"))

        proxy.restore()
        await wait_for_shared_tier(a, True)
        deleted = await a.DeleteRouteConfig(delete)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(refused.value).reason == "SHARED_TIER_UNAVAILABLE"
    assert kept.route_config.route_id == "api_offers"
    assert deleted.invalidated_count == 1


async def test_l1_staleness_is_bounded_while_the_subscription_is_lost(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    proxy = await proxied(fault_proxy, redis_url)
    settings = cache_settings(
        sqlite_cache_url,
        redis_url=proxy.url_for(redis_url),
        redis_prefix=redis_prefix,
        l1_disconnected_max_age_seconds=0.3,
    )
    async with running_cache(settings, issuer) as a:
        await put_route(a)
        await a.Store(store("k1", b"v"))
        proxy.cut()
        await wait_for_shared_tier(a, False)
        await asyncio.sleep(0.4)
        late = await a.Lookup(lookup("k1"))
        proxy.restore()

    assert late.result == MISS


async def test_stalled_redis_costs_callers_no_errors(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    proxy = await proxied(fault_proxy, redis_url)
    settings = cache_settings(
        sqlite_cache_url, redis_url=proxy.url_for(redis_url), redis_prefix=redis_prefix
    )
    async with running_cache(settings, issuer) as a:
        await put_route(a)
        await a.Store(store("k1", b"v"))
        proxy.stall()
        answers = await asyncio.gather(
            a.Lookup(lookup("k1")),
            a.Lookup(lookup("missing")),
            a.Store(store("k2", b"v2")),
        )
        proxy.restore()
        await wait_for_shared_tier(a, True)
        recovered = await a.Lookup(lookup("k2"))
        await a.Store(store("k2", b"v3"))
        shared = await a.Lookup(lookup("k2"))

    assert answers[0].result == HIT
    assert answers[1].result == MISS
    assert answers[2].stored
    # L1 was dropped on reconnect; the stalled store may have landed later.
    assert recovered.tier != pb.CACHE_TIER_L1
    assert shared.value == b"v3"


async def test_store_with_a_lease_voided_before_a_cut_is_refused_as_voided(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    proxy = await proxied(fault_proxy, redis_url)
    settings = cache_settings(
        sqlite_cache_url, redis_url=proxy.url_for(redis_url), redis_prefix=redis_prefix
    )
    async with running_cache(settings, issuer) as a:
        await wait_for_shared_tier(a, True)
        await put_route(a)
        lease = await a.Lookup(
            pb.LookupRequest(route_id="api_offers", key="k1", request_lease=True)
        )
        await a.Invalidate(invalidate("k1"))
        proxy.cut()
        await wait_for_shared_tier(a, False)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.Store(
                pb.StoreRequest(
                    route_id="api_offers",
                    key="k1",
                    value=b"old",
                    lease_token=lease.lease_token,
                )
            )
        stats = await a.GetStats(pb.GetStatsRequest(route_id="api_offers"))
        proxy.restore()

    assert lease.lease_token
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert error_info(refused.value).reason == "LEASE_VOIDED"
    assert stats.overall.voided_stores == 1


async def test_store_with_a_lease_granted_during_a_cut_is_refused_once_redis_is_back(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    """A lease granted while Redis was away is this replica's alone: its fill
    may predate invalidations made elsewhere meanwhile, so once Redis is back
    the store is refused as the proto says, never answered stored=false."""
    proxy = await proxied(fault_proxy, redis_url)
    settings = cache_settings(
        sqlite_cache_url, redis_url=proxy.url_for(redis_url), redis_prefix=redis_prefix
    )
    async with running_cache(settings, issuer) as a:
        await wait_for_shared_tier(a, True)
        await put_route(a)
        proxy.cut()
        await wait_for_shared_tier(a, False)
        lease = await a.Lookup(
            pb.LookupRequest(route_id="api_offers", key="k1", request_lease=True)
        )
        proxy.restore()
        await wait_for_shared_tier(a, True)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.Store(
                pb.StoreRequest(
                    route_id="api_offers",
                    key="k1",
                    value=b"filled-during-the-cut",
                    lease_token=lease.lease_token,
                )
            )
        after = await a.Lookup(lookup("k1"))

    assert lease.lease_token
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert error_info(refused.value).reason == "LEASE_VOIDED"
    assert after.result == MISS


async def test_store_with_another_replicas_lease_on_a_cut_off_replica_is_refused(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    """A cut-off replica cannot check a lease another replica handed out
    against the invalidation log: it refuses the store instead of claiming
    success with stored=false."""
    proxy = await proxied(fault_proxy, redis_url)

    def settings(url: str, replica_id: str) -> CacheSettings:
        return cache_settings(
            sqlite_cache_url,
            redis_url=url,
            redis_prefix=redis_prefix,
            replica_id=replica_id,
        )

    async with (
        running_cache(settings(proxy.url_for(redis_url), "behind-proxy"), issuer) as a,
        running_cache(settings(redis_url, "direct"), issuer) as b,
    ):
        await wait_for_shared_tier(a, True)
        await put_route(b)
        lease = await b.Lookup(
            pb.LookupRequest(route_id="api_offers", key="k1", request_lease=True)
        )
        proxy.cut()
        await wait_for_shared_tier(a, False)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.Store(
                pb.StoreRequest(
                    route_id="api_offers",
                    key="k1",
                    value=b"v",
                    lease_token=lease.lease_token,
                )
            )
        proxy.restore()

    assert lease.lease_token
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert error_info(refused.value).reason == "LEASE_VOIDED"


async def test_l1_staleness_under_a_stall_counts_from_the_last_pong(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    """A stall is noticed only after the pong deadline or a call's timeout
    (both 2 s here); invalidations may have been missed from the last pong on,
    so the bound runs from there, not from when the loss was noticed."""
    proxy = await proxied(fault_proxy, redis_url)
    settings = cache_settings(
        sqlite_cache_url,
        redis_url=proxy.url_for(redis_url),
        redis_prefix=redis_prefix,
        redis_timeout_seconds=2.0,
        l1_disconnected_max_age_seconds=1.0,
    )
    async with running_cache(settings, issuer) as a:
        await wait_for_shared_tier(a, True)
        await put_route(a)
        await a.Store(store("k1", b"v"))
        proxy.stall()
        await wait_for_shared_tier(a, False)
        late = await a.Lookup(lookup("k1"))
        proxy.restore()

    assert late.result == MISS


async def test_route_changed_during_a_cut_reaches_the_other_replica_after_it(
    sqlite_cache_url, redis_url, redis_prefix, issuer, fault_proxy
):
    proxy = await proxied(fault_proxy, redis_url)
    cut_settings = cache_settings(
        sqlite_cache_url,
        redis_url=proxy.url_for(redis_url),
        redis_prefix=redis_prefix,
        replica_id="behind-proxy",
    )
    direct_settings = cache_settings(
        sqlite_cache_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        replica_id="direct",
    )
    async with (
        running_cache(cut_settings, issuer) as a,
        running_cache(direct_settings, issuer) as b,
    ):
        await wait_for_shared_tier(a, True)
        await put_route(a)
        assert (await b.Store(store("k1", b"v"))).stored

        proxy.cut()
        await wait_for_shared_tier(a, False)
        await put_route(a, policy=pb.CACHE_POLICY_NO_CACHE, ttl_seconds=0)
        proxy.restore()
        await wait_for_shared_tier(a, True)

        stored = True
        for _ in range(200):
            stored = (await b.Store(store("k2", b"v"))).stored
            if not stored:
                break
            await asyncio.sleep(0.05)

    assert not stored, "the other replica never learnt the route is NO_CACHE"
