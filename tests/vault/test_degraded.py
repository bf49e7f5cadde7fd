"""Database outages: reads from memory, writes refused, recovery on its own.

A fault proxy sits between the vault and PostgreSQL (a file-backed SQLite
cannot be cut from outside, so these run on PostgreSQL only).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator

import grpc
import pytest

from empire.vault.v1 import vault_service_pb2 as pb
from tests.harness.db_fixtures import FaultProxyFactory
from tests.harness.fault_proxy import FaultProxy, host_port
from tests.harness.grpc_errors import error_info
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import (
    RunningVault,
    VaultClient,
    running_vault,
    vault_settings,
)
from tests.vault.test_rewrap import wait_for_rewrap

pytestmark = pytest.mark.postgres


class ProxiedVault:
    def __init__(self, vault: RunningVault, proxy: FaultProxy) -> None:
        self.vault = vault
        self.client = vault.client
        self.proxy = proxy


@pytest.fixture
async def proxied(
    postgres_url: str,
    fault_proxy: FaultProxyFactory,
    master_key: bytes,
    issuer: LocalIssuer,
    request: pytest.FixtureRequest,
) -> AsyncIterator[ProxiedVault]:
    proxy = await fault_proxy(*host_port(postgres_url))
    overrides = getattr(request, "param", {})
    settings = vault_settings(
        proxy.url_for(postgres_url),
        master_key,
        database_probe_seconds=0.1,
        database_timeout_seconds=0.5,
        **overrides,
    )
    async with running_vault(settings, issuer) as vault:
        yield ProxiedVault(vault, proxy)
        proxy.restore()


async def wait_until_available(client: object) -> None:
    for _ in range(200):
        status = await client.status()  # type: ignore[attr-defined]
        if status.database_state == pb.DATABASE_STATE_AVAILABLE:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the vault did not recover")


async def test_reads_are_served_from_memory_during_an_outage(
    proxied: ProxiedVault,
) -> None:
    client = proxied.client
    await client.put("llm/openai", b"sk-1")
    await client.get("llm/openai")

    proxied.proxy.cut()
    during = await client.get("llm/openai")
    status = await client.status()

    assert during.value == b"sk-1"
    assert during.stale
    assert status.database_state == pb.DATABASE_STATE_DEGRADED
    assert status.HasField("degraded_since")


async def test_writes_fail_unavailable_during_an_outage(proxied: ProxiedVault) -> None:
    await proxied.client.put("k", b"v")
    proxied.proxy.cut()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await proxied.client.put("k", b"v2")

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "DATABASE_UNAVAILABLE"


async def test_secret_never_read_is_unavailable_during_an_outage(
    proxied: ProxiedVault, postgres_url: str, issuer: LocalIssuer
) -> None:
    # Written by another replica, so this one never held a copy.
    other = dataclasses.replace(proxied.vault.settings, database_url=postgres_url)
    async with running_vault(other, issuer) as replica:
        await replica.client.put("unread", b"v")
    await proxied.client.put("read", b"v")
    proxied.proxy.cut()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await proxied.client.get("unread")

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("proxied", [{"degraded_cache_ttl_seconds": 0}], indirect=True)
async def test_copies_older_than_the_ttl_are_not_served(proxied: ProxiedVault) -> None:
    await proxied.client.put("k", b"v")
    await proxied.client.get("k")
    await asyncio.sleep(0.01)
    proxied.proxy.cut()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await proxied.client.get("k")

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_service_recovers_by_itself_and_records_outage_reads(
    proxied: ProxiedVault,
) -> None:
    client = proxied.client
    await client.put("k", b"v1")
    await client.get("k")
    proxied.proxy.cut()
    await client.get("k")
    await client.get("k")

    proxied.proxy.restore()
    await wait_until_available(client)
    await client.put("k", b"v2")
    after = await client.get("k")
    events = await client.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(key_id="k", action="GetSecret")
    )
    chain = await client.call("VerifyAuditLog", pb.VerifyAuditLogRequest())

    assert (after.value, after.stale) == (b"v2", False)
    assert len(events.events) == 4
    assert chain.intact


# Every version kept, so each acknowledged write can be read back.
@pytest.mark.parametrize("proxied", [{"max_versions": 100_000}], indirect=True)
async def test_cut_during_concurrent_writes_loses_no_acknowledged_write(
    proxied: ProxiedVault,
) -> None:
    client = proxied.client
    keys = [f"fault/k{number}" for number in range(8)]
    for key in keys:
        await client.put(key, b"initial")
        await client.get(key)
    acknowledged: list[tuple[str, int, bytes]] = []
    refused: list[str] = []
    stop = asyncio.Event()

    async def writer(key: str) -> None:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            value = f"{key}-{sequence}-{random.random()}".encode()
            try:
                response = await client.put(key, value)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                refused.append(key)
                await asyncio.sleep(0.01)
                continue
            acknowledged.append((key, response.version, value))

    writers = [asyncio.create_task(writer(key)) for key in keys]
    await asyncio.sleep(0.3)
    proxied.proxy.cut()
    reads_during_cut = [await client.get(key) for key in keys]
    await asyncio.sleep(0.3)
    proxied.proxy.restore()
    await wait_until_available(client)
    at_recovery = len(acknowledged)
    for _ in range(200):
        if len(acknowledged) > at_recovery + len(keys):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*writers)

    assert refused, "the cut refused no write: it did not happen mid-stream"
    assert len(acknowledged) > at_recovery + len(keys), "no write after recovery"
    assert all(read.stale for read in reads_during_cut)
    # No version was acknowledged twice, and each reads back as written.
    assert len({(key, version) for key, version, _ in acknowledged}) == len(
        acknowledged
    )
    for key, version, value in acknowledged:
        assert (await client.get(key, version=version)).value == value, (key, version)
    for key in keys:
        # Every version the secret claims exists and decrypts: none half-written.
        listed = await client.call("ListSecrets", pb.ListSecretsRequest(prefix=key))
        metadata = listed.secrets[0]
        assert metadata.current_version >= max(
            version for written, version, _ in acknowledged if written == key
        )
        for number in range(metadata.oldest_version, metadata.current_version + 1):
            assert (await client.get(key, version=number)).version == number


async def get_within(client: VaultClient, key_id: str) -> pb.GetSecretResponse:
    """A read with a deadline well above the vault's database timeout (0.5 s
    in these tests) and well below PostgreSQL's statement timeout (10 s)."""
    request = pb.GetSecretRequest(key_id=key_id)
    response: pb.GetSecretResponse = await client.stub.GetSecret(
        request, metadata=client.metadata(), timeout=6
    )
    return response


async def test_reads_held_in_memory_answer_during_a_stall_within_the_db_timeout(
    proxied: ProxiedVault,
) -> None:
    # A stalled network (no reset, nothing answers) must not hold a read this
    # replica could serve from memory for the whole statement timeout (10 s):
    # it gives up on the database after its own timeout (0.5 s here).
    client = proxied.client
    await client.put("llm/openai", b"sk-1")
    await client.get("llm/openai")

    proxied.proxy.stall()
    during = await get_within(client, "llm/openai")
    again = await get_within(client, "llm/openai")

    assert (during.value, during.stale, during.source) == (b"sk-1", True, "memory")
    assert (again.value, again.stale, again.source) == (b"sk-1", True, "memory")


async def test_a_read_given_up_during_a_stall_is_audited_once(
    proxied: ProxiedVault,
) -> None:
    # The read's batch is still pending when it falls back to memory; once
    # the stall ends that batch commits, and the chain must hold the read's
    # event exactly once (from the spool), not again from the batch.
    client = proxied.client
    await client.put("k", b"v1")
    await client.get("k")
    proxied.proxy.stall()
    during = await get_within(client, "k")

    proxied.proxy.restore()
    await wait_until_available(client)
    after = await client.get("k")
    events = await client.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(key_id="k", action="GetSecret")
    )
    chain = await client.call("VerifyAuditLog", pb.VerifyAuditLogRequest())

    assert (during.source, after.source) == ("memory", "database")
    assert len(events.events) == 3
    assert chain.intact


async def test_a_stall_is_noticed_even_when_the_readers_gave_up_first(
    proxied: ProxiedVault,
) -> None:
    # Callers with deadlines shorter than the database timeout (llm's) go
    # before the read gives up on the database: the replica must still turn
    # to memory, or every such caller times out until the statement timeout.
    client = proxied.client
    await client.put("k", b"v1")
    await client.get("k")
    proxied.proxy.stall()

    reader = asyncio.create_task(proxied.vault.runtime.vault.get("tester", "k", 0))
    await asyncio.sleep(0)  # the read is queued for the database
    reader.cancel()
    health = proxied.vault.runtime.health
    for _ in range(100):  # a deadline well under the statement timeout
        if health.degraded:
            break
        await asyncio.sleep(0.05)
    degraded = health.degraded
    during = await get_within(client, "k")

    assert reader.cancelled()
    assert degraded
    assert (during.value, during.source) == (b"v1", "memory")


async def test_status_answers_during_a_stall_within_the_db_timeout(
    proxied: ProxiedVault,
) -> None:
    # GetStatus reads the rewrap's progress from the database: during a
    # stall it must answer from the last known progress after the vault's
    # database timeout (0.5 s here), not after the statement timeout (10 s).
    client = proxied.client
    await client.put("k", b"v")
    await client.call("RotateMasterKey", pb.RotateMasterKeyRequest())
    before = await wait_for_rewrap(proxied.vault)

    proxied.proxy.stall()
    during = [await status_within(client) for _ in range(3)]
    proxied.proxy.restore()
    await wait_until_available(client)

    for status in during:
        assert status.database_state == pb.DATABASE_STATE_DEGRADED
        assert status.rewrap == before.rewrap
        assert status.master_key_version == before.master_key_version == 2


async def status_within(client: VaultClient) -> pb.GetStatusResponse:
    """GetStatus with a deadline well above the vault's database timeout and
    well below PostgreSQL's statement timeout."""
    response: pb.GetStatusResponse = await client.stub.GetStatus(
        pb.GetStatusRequest(), metadata=client.metadata(), timeout=6
    )
    return response
