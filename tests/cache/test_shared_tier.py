"""The Redis tier on its own: invalidations that span many chunks stay exact,
even when one is cut off between chunks."""

from __future__ import annotations

import time

import pytest

from services.cache.coherence import (
    KIND_KEY,
    KIND_PREFIX,
    KIND_ROUTE,
    KIND_TAG,
    Selector,
    entry_id,
)
from services.cache.shared_tier import REDIS_FAILURES, RedisTier, StoreCommand
from tests.harness.fault_proxy import host_port

pytestmark = pytest.mark.redis


def command(key: str, tags: tuple[str, ...]) -> StoreCommand:
    return StoreCommand(
        "r",
        key,
        "",
        entry_id("r", key, ""),
        b"v",
        tags,
        int(time.time() * 1000),
        600,
        False,
        0,
        0,
        "",
        0,
        False,
    )


async def test_route_purge_in_chunks_reaches_every_entry(redis_url, redis_prefix):
    tier = RedisTier(redis_url, redis_prefix, 5.0, "t")
    try:
        await tier.bulk_store("r", [(f"k{i}", b"v") for i in range(1050)], 600, 600_000)
        soft, _ = await tier.invalidate(
            Selector(KIND_ROUTE, "r", "", soft=True), int(time.time() * 1000), chunk=100
        )
        stale = await tier.fetch(entry_id("r", "k1049", ""))
        hard, _ = await tier.invalidate(Selector(KIND_ROUTE, "r", ""), 0, chunk=100)
        left = await tier.client.zcard(redis_prefix + "r:r")
        gone = await tier.fetch(entry_id("r", "k7", ""))
    finally:
        await tier.close()

    assert (soft, hard, left) == (1050, 1050, 0)
    assert stale is not None and stale.fresh_until_ms <= int(time.time() * 1000)
    assert gone is None


async def test_prefix_and_tag_purges_in_chunks_are_exact(redis_url, redis_prefix):
    tier = RedisTier(redis_url, redis_prefix, 5.0, "t")
    try:
        for index in range(250):
            tags = ("even",) if index % 2 == 0 else ("odd",)
            await tier.store(command(f"a{index}", tags))
            await tier.store(command(f"b{index}", tags))
        by_prefix, _ = await tier.invalidate(
            Selector(KIND_PREFIX, "r", "a"), 0, chunk=40
        )
        by_tag, _ = await tier.invalidate(Selector(KIND_TAG, "", "even"), 0, chunk=40)
        survivors = sorted(
            member.decode()
            for member in await tier.client.zrange(redis_prefix + "r:r", 0, -1)
        )
        odd_tagged = await tier.client.scard(redis_prefix + "t:odd")
    finally:
        await tier.close()

    assert by_prefix == 250
    assert by_tag == 125  # the even "b" keys; the even "a" keys were already gone
    assert survivors == sorted(f"b{i}\x1f" for i in range(1, 250, 2))
    assert odd_tagged == 125


async def cut_off_after_the_first_chunk(
    selector: Selector, redis_url: str, prefix: str, fault_proxy
) -> None:
    """Starts a purge through a proxy and cuts Redis off before its second chunk."""
    proxy = await fault_proxy(*host_port(redis_url))
    tier = RedisTier(proxy.url_for(redis_url), prefix, 1.0, "cut-off")
    try:
        progress = await tier.start_invalidation(selector, 0, chunk=100)
        assert progress.cursor, "the purge must need more than one chunk"
        proxy.cut()
        with pytest.raises(REDIS_FAILURES):
            await tier.continue_invalidation(progress)
    finally:
        await tier.close()


async def surviving(tier: RedisTier, keys: list[str]) -> list[str]:
    return [key for key in keys if await tier.fetch(entry_id("r", key, ""))]


async def test_tag_purge_cut_off_between_chunks_is_finished_by_its_retry(
    redis_url, redis_prefix, fault_proxy
):
    tier = RedisTier(redis_url, redis_prefix, 5.0, "t")
    red = [f"red{i}" for i in range(1050)]
    try:
        for key in red:
            await tier.store(command(key, ("red",)))
        await tier.store(command("blue", ("blue",)))
        red_tag = Selector(KIND_TAG, "", "red")
        await cut_off_after_the_first_chunk(
            red_tag, redis_url, redis_prefix, fault_proxy
        )
        retried, _ = await tier.invalidate(red_tag, 0, chunk=100)
        survivors = await surviving(tier, [*red, "blue"])
        leftovers = await tier.client.keys(redis_prefix + "aside:*")
    finally:
        await tier.close()

    assert retried == 950  # the 100 of the first chunk were already gone
    assert survivors == ["blue"]
    assert leftovers == []


async def test_route_purge_cut_off_between_chunks_hides_nothing_from_a_key_purge(
    redis_url, redis_prefix, fault_proxy
):
    tier = RedisTier(redis_url, redis_prefix, 5.0, "t")
    keys = [f"k{i:04}" for i in range(1050)]
    try:
        await tier.bulk_store("r", [(key, b"v") for key in keys], 600, 600_000)
        route = Selector(KIND_ROUTE, "r", "")
        await cut_off_after_the_first_chunk(route, redis_url, redis_prefix, fault_proxy)
        # Named now only by the interrupted purge's aside index, not by the
        # route's: the key purge must still reach it.
        await tier.invalidate(Selector(KIND_KEY, "r", "k1049"), 0)
        last_key = await tier.fetch(entry_id("r", "k1049", ""))
        await tier.invalidate(route, 0, chunk=100)
        survivors = await surviving(tier, keys)
        leftovers = await tier.client.keys(redis_prefix + "aside:*")
    finally:
        await tier.close()

    assert last_key is None
    assert survivors == []
    assert leftovers == []
