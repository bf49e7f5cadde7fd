"""The Redis tier on its own: invalidations that span many chunks stay exact."""

from __future__ import annotations

import time

import pytest

from services.cache.coherence import (
    KIND_PREFIX,
    KIND_ROUTE,
    KIND_TAG,
    Selector,
    entry_id,
)
from services.cache.shared_tier import RedisTier, StoreCommand

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
