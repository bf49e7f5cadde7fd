"""A million small entries in the shared tier, and what each costs in Redis memory."""

from __future__ import annotations

import pytest

from services.cache.coherence import entry_id
from services.cache.shared_tier import RedisTier

pytestmark = pytest.mark.redis

ENTRIES = 1_000_000
VALUE = b"v" * 16


async def test_a_million_small_entries_and_their_memory_per_entry(
    redis_url, redis_prefix
):
    tier = RedisTier(redis_url, redis_prefix, 5.0, "memory-test")
    client = tier.client
    try:
        before = (await client.info("memory"))["used_memory"]
        keys = [f"/api/offers/{index}" for index in range(ENTRIES)]
        stored = await tier.bulk_store(
            "api_offers", [(key, VALUE) for key in keys], 3600, 3600_000, batch=2000
        )
        after = (await client.info("memory"))["used_memory"]

        sample = keys[:: ENTRIES // 1000]
        entry_bytes = [
            await client.memory_usage(
                redis_prefix + "e:" + entry_id("api_offers", key, "")
            )
            for key in sample
        ]
        index_bytes = await client.memory_usage(
            redis_prefix + "r:api_offers", samples=0
        )
        indexed = await client.zcard(redis_prefix + "r:api_offers")
        records = [
            await tier.fetch(entry_id("api_offers", key, "")) for key in sample[:10]
        ]
    finally:
        # Deleting the known names is far quicker than the fixture's scan.
        names = [redis_prefix + "e:" + entry_id("api_offers", key, "") for key in keys]
        for start in range(0, len(names), 10_000):
            await client.unlink(*names[start : start + 10_000])
        await tier.close()

    per_entry = sum(entry_bytes) / len(entry_bytes) + index_bytes / ENTRIES
    print(
        f"\n{ENTRIES} entries of {len(VALUE)}-byte values:"
        f" {per_entry:.0f} bytes per entry"
        f" (hash {sum(entry_bytes) / len(entry_bytes):.0f} + route index"
        f" {index_bytes / ENTRIES:.0f}); used_memory grew"
        f" {(after - before) / ENTRIES:.0f} bytes per entry (shared server, noisy)"
    )
    assert stored == indexed == ENTRIES
    assert all(record is not None and record.value == VALUE for record in records)
    assert per_entry < 400
