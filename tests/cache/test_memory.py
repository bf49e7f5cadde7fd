"""A million small entries in the shared tier, and what each costs in Redis memory."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from services.cache.coherence import entry_id
from services.cache.shared_tier import RedisTier

pytestmark = pytest.mark.redis

ENTRIES = 1_000_000
VALUE = b"v" * 16
# Each entry carries one tag, as a Store with a surrogate key would; a tag
# names this many entries (a page of offers, say).
ENTRIES_PER_TAG = 100


def tag_of(index: int) -> str:
    return f"offers-page:{index // ENTRIES_PER_TAG}"


async def memory_usage(client: Redis, name: str) -> int:
    """Bytes of one key with every element counted (samples=0)."""
    used = await client.memory_usage(name, samples=0)
    assert used is not None, f"{name} is missing"
    return int(used)


async def test_a_million_small_entries_and_their_memory_per_entry(
    redis_url, redis_prefix, capsys, record_property
):
    tier = RedisTier(redis_url, redis_prefix, 5.0, "memory-test")
    client = tier.client
    keys = [f"/api/offers/{index}" for index in range(ENTRIES)]
    tags = [tag_of(index) for index in range(0, ENTRIES, ENTRIES_PER_TAG)]
    try:
        before = (await client.info("memory"))["used_memory"]
        stored = await tier.bulk_store(
            "api_offers",
            [(key, VALUE, (tag_of(index),)) for index, key in enumerate(keys)],
            3600,
            3600_000,
            batch=2000,
        )
        after = (await client.info("memory"))["used_memory"]

        sample = range(0, ENTRIES, ENTRIES // 1000)
        entry_bytes = [
            await memory_usage(
                client, redis_prefix + "e:" + entry_id("api_offers", keys[index], "")
            )
            for index in sample
        ]
        tag_bytes = [
            await memory_usage(client, redis_prefix + "t:" + tags[i])
            for i in range(0, len(tags), len(tags) // 100)
        ]
        index_bytes = await memory_usage(client, redis_prefix + "r:api_offers")
        indexed = await client.zcard(redis_prefix + "r:api_offers")
        tagged = await client.scard(redis_prefix + "t:" + tags[-1])
        records = [
            await tier.fetch(entry_id("api_offers", keys[index], ""))
            for index in sample[:10]
        ]
    finally:
        # Deleting the known names is far quicker than the fixture's scan.
        names = [redis_prefix + "e:" + entry_id("api_offers", key, "") for key in keys]
        names += [redis_prefix + "t:" + tag for tag in tags]
        for start in range(0, len(names), 10_000):
            await client.unlink(*names[start : start + 10_000])
        await tier.close()

    entry = sum(entry_bytes) / len(entry_bytes)
    tag_share = sum(tag_bytes) / len(tag_bytes) / ENTRIES_PER_TAG
    per_entry = entry + index_bytes / ENTRIES + tag_share
    grown = (after - before) / ENTRIES
    report = (
        f"{ENTRIES} entries of {len(VALUE)}-byte values, one tag each:"
        f" {per_entry:.0f} bytes per entry (hash {entry:.0f} + route index"
        f" {index_bytes / ENTRIES:.0f} + tag set {tag_share:.0f}); used_memory"
        f" grew {grown:.0f} bytes per entry (with Redis's own key overhead;"
        " shared server, noisy)"
    )
    # Shown in the plain pytest output, not only with -s; and in JUnit XML.
    with capsys.disabled():
        print(f"\n{report}")
    record_property("redis_bytes_per_entry", round(per_entry))
    record_property("redis_used_memory_growth_per_entry", round(grown))

    assert stored == indexed == ENTRIES
    assert tagged == ENTRIES_PER_TAG
    assert all(
        record is not None
        and record.value == VALUE
        and record.tags == (tag_of(index),)
        and record.digest
        for index, record in zip(sample, records, strict=False)
    )
    assert per_entry < 520
