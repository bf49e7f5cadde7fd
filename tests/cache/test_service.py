"""The cache over gRPC with the in-process tier alone (the embedded default)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from empire.cache.v1 import cache_service_pb2 as pb
from tests.cache.conftest import cache_settings, put_route, running_cache
from tests.harness.grpc_errors import bad_request, error_info

HIT = pb.LOOKUP_RESULT_HIT
STALE = pb.LOOKUP_RESULT_STALE
MISS = pb.LOOKUP_RESULT_MISS


async def test_store_then_lookup_hits_from_l1(sqlite_cache_url, issuer):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        await put_route(client)
        first = await client.Lookup(
            pb.LookupRequest(route_id="api_offers", key="/api/offers/1")
        )
        await client.Store(
            pb.StoreRequest(
                route_id="api_offers", key="/api/offers/1", value=b"offer-1"
            )
        )
        second = await client.Lookup(
            pb.LookupRequest(route_id="api_offers", key="/api/offers/1")
        )

    assert first.result == MISS
    assert second.result == HIT
    assert second.value == b"offer-1"
    assert second.tier == pb.CACHE_TIER_L1
    assert second.age_ms >= 0


async def test_lookup_of_unknown_route_is_not_found(sqlite_cache_url, issuer):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.Lookup(pb.LookupRequest(route_id="nowhere", key="k"))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "ROUTE_NOT_FOUND"


def lookup(key: str, route_id: str = "api_offers", **fields) -> pb.LookupRequest:
    return pb.LookupRequest(route_id=route_id, key=key, **fields)


def store(
    key: str, value: bytes, route_id: str = "api_offers", **fields
) -> pb.StoreRequest:
    return pb.StoreRequest(route_id=route_id, key=key, value=value, **fields)


@pytest.mark.parametrize(
    ("call", "field", "reason"),
    [
        pytest.param(
            lambda c: c.Lookup(lookup("")), "key", "MISSING_KEY", id="empty-key"
        ),
        pytest.param(
            lambda c: c.Lookup(lookup("k" * 2000)), "key", "KEY_TOO_LARGE", id="big-key"
        ),
        pytest.param(
            lambda c: c.Lookup(lookup("a\x00b")), "key", "INVALID_KEY", id="control-key"
        ),
        pytest.param(
            lambda c: c.Lookup(lookup("k", max_wait_ms=-1)),
            "max_wait_ms",
            "INVALID_MAX_WAIT",
            id="negative-wait",
        ),
        pytest.param(
            lambda c: c.Store(store("k", b"x" * (1024 * 1024 + 1))),
            "value",
            "VALUE_TOO_LARGE",
            id="big-value",
        ),
        pytest.param(
            lambda c: c.Store(store("k", b"v", ttl_seconds=-3)),
            "ttl_seconds",
            "INVALID_TTL",
            id="negative-ttl",
        ),
        pytest.param(
            lambda c: c.Store(store("k", b"v", tags=[""])),
            "tags[0]",
            "INVALID_TAG",
            id="tag",
        ),
        pytest.param(
            lambda c: c.Store(store("k", b"v", tags=[f"t{i}" for i in range(40)])),
            "tags",
            "TOO_MANY_TAGS",
            id="tags",
        ),
        pytest.param(
            lambda c: c.Store(store("k", b"v", lease_token="forged")),
            "lease_token",
            "INVALID_LEASE",
            id="lease",
        ),
        pytest.param(
            lambda c: c.Invalidate(
                pb.InvalidateRequest(route_id="api_offers", tag="t")
            ),
            "route_id",
            "ROUTE_WITH_TAG",
            id="tag-with-route",
        ),
        pytest.param(
            lambda c: c.Invalidate(pb.InvalidateRequest()),
            "route_id",
            "MISSING_ROUTE_ID",
            id="no-selector",
        ),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    sqlite_cache_url, issuer, call, field, reason
):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        await put_route(client)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(client)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == reason
    assert bad_request(caught.value).field_violations[0].field == field


async def test_scopes_are_enforced(sqlite_cache_url, issuer):
    settings = cache_settings(sqlite_cache_url)
    async with running_cache(settings, issuer, scopes=["cache:use"]) as client:
        with pytest.raises(grpc.aio.AioRpcError) as admin:
            await put_route(client)
        with pytest.raises(grpc.aio.AioRpcError) as purge:
            await client.Invalidate(pb.InvalidateRequest(tag="t"))

    assert admin.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert purge.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_policies_decide_what_is_served_after_the_ttl(sqlite_cache_url, issuer):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        await put_route(client, route_id="aggressive", stale_if_error_seconds=60)
        await put_route(
            client, route_id="conservative", policy=pb.CACHE_POLICY_CONSERVATIVE
        )
        await put_route(
            client, route_id="never", policy=pb.CACHE_POLICY_NO_CACHE, ttl_seconds=0
        )
        for route_id in ("aggressive", "conservative"):
            await client.Store(store("k", b"v", route_id=route_id, ttl_seconds=1))
        never = await client.Store(store("k", b"v", route_id="never"))
        never_lookup = await client.Lookup(
            lookup("k", route_id="never", request_lease=True)
        )
        await asyncio.sleep(1.1)
        aggressive = await client.Lookup(lookup("k", route_id="aggressive"))
        aggressive_on_error = await client.Lookup(
            lookup("k", route_id="aggressive", origin_failed=True)
        )
        conservative_on_error = await client.Lookup(
            lookup("k", route_id="conservative", origin_failed=True)
        )

    assert not never.stored
    assert never_lookup.result == MISS and not never_lookup.lease_token
    assert aggressive.result == MISS  # no stale-while-revalidate window configured
    assert (aggressive_on_error.result, aggressive_on_error.value) == (STALE, b"v")
    assert aggressive_on_error.ttl_remaining_ms < 0
    assert conservative_on_error.result == MISS


async def test_dynamic_ttl_grows_while_the_value_holds_and_shrinks_on_change(
    sqlite_cache_url, issuer
):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        await put_route(
            client,
            policy=pb.CACHE_POLICY_DYNAMIC,
            ttl_seconds=100,
            min_ttl_seconds=10,
            max_ttl_seconds=300,
        )
        ttls = []
        for value in (b"a", b"a", b"a", b"a", b"b", b"c"):
            ttls.append((await client.Store(store("k", value))).ttl_seconds)

    assert ttls == [100, 200, 300, 300, 150, 75]


async def test_dynamic_ttl_stays_within_its_bounds_after_an_override(
    sqlite_cache_url, issuer
):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        await put_route(
            client,
            policy=pb.CACHE_POLICY_DYNAMIC,
            ttl_seconds=100,
            min_ttl_seconds=10,
            max_ttl_seconds=300,
        )
        await client.Store(store("long", b"a", ttl_seconds=10_000))
        await client.Store(store("short", b"a", ttl_seconds=1))
        halved = await client.Store(store("long", b"b"))
        doubled = await client.Store(store("short", b"a"))

    assert (halved.ttl_seconds, doubled.ttl_seconds) == (300, 10)


async def test_embedded_stampede_elects_one_filler(sqlite_cache_url, issuer):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        await put_route(client)
        fills = 0

        async def caller() -> bytes:
            nonlocal fills
            answer = await client.Lookup(
                lookup("hot", request_lease=True, max_wait_ms=5000)
            )
            if answer.result == MISS:
                fills += 1
                await asyncio.sleep(0.1)
                await client.Store(store("hot", b"v", lease_token=answer.lease_token))
                return b"v"
            return answer.value

        values = await asyncio.gather(*(caller() for _ in range(20)))

    assert fills == 1
    assert set(values) == {b"v"}


async def test_embedded_invalidation_voids_an_outstanding_lease(
    sqlite_cache_url, issuer
):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        await put_route(client)
        lease = await client.Lookup(lookup("k", request_lease=True))
        await client.Invalidate(
            pb.InvalidateRequest(route_id="api_offers", key_prefix="k")
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.Store(store("k", b"old", lease_token=lease.lease_token))

    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert error_info(refused.value).reason == "LEASE_VOIDED"


async def test_stats_count_hits_misses_and_tiers_per_route(sqlite_cache_url, issuer):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        await put_route(client)
        await put_route(client, route_id="other")
        await client.Store(store("k", b"v"))
        for _ in range(3):
            await client.Lookup(lookup("k"))
        await client.Lookup(lookup("absent"))
        await client.Lookup(lookup("absent", route_id="other"))
        overall = await client.GetStats(pb.GetStatsRequest())
        one = await client.GetStats(pb.GetStatsRequest(route_id="api_offers"))

    assert (overall.overall.hits, overall.overall.misses) == (3, 2)
    assert overall.overall.l1_hits == 3
    assert overall.overall.hit_ratio == pytest.approx(0.6)
    assert overall.overall.entries == 1 and overall.overall.bytes > 0
    assert overall.overall.lookup_p99_ms > 0
    assert [r.route_id for r in overall.routes] == ["api_offers", "other"]
    assert (one.overall.hits, one.overall.misses, one.overall.stores) == (3, 1, 1)
    assert not overall.shared_tier_connected


async def test_lookups_are_exported_as_prometheus_metrics(sqlite_cache_url, issuer):
    from prometheus_client import REGISTRY

    def hits() -> float:
        value = REGISTRY.get_sample_value(
            "empire_cache_lookups_total",
            {"route": "metrics_route", "result": "hit", "tier": "l1"},
        )
        return value or 0.0

    before = hits()
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        await put_route(client, route_id="metrics_route")
        await client.Store(store("k", b"v", route_id="metrics_route"))
        await client.Lookup(lookup("k", route_id="metrics_route"))
        await client.Lookup(lookup("k", route_id="metrics_route"))

    assert hits() - before == 2


async def test_stats_count_evictions_per_route(sqlite_cache_url, issuer):
    settings = cache_settings(sqlite_cache_url, l1_max_bytes=16 * 1024)
    async with running_cache(settings, issuer) as client:
        await put_route(client, route_id="bulky")
        await put_route(client, route_id="quiet")
        for index in range(100):
            await client.Store(store(f"k{index}", b"x" * 500, route_id="bulky"))
        await client.Lookup(lookup("absent", route_id="quiet"))
        stats = await client.GetStats(pb.GetStatsRequest())
        one = await client.GetStats(pb.GetStatsRequest(route_id="bulky"))

    by_route = {r.route_id: r.stats.evictions for r in stats.routes}
    assert stats.overall.evictions > 0
    assert by_route == {"bulky": stats.overall.evictions, "quiet": 0}
    assert one.overall.evictions == stats.overall.evictions
