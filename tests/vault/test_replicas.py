"""Several replicas on one database: the audit chain, writes and the keyring.

The concurrency test runs each replica as its own process, as in production,
so their transactions truly overlap instead of taking turns on one event loop.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import grpc
import psycopg
import pytest

from empire.vault.v1 import vault_service_pb2 as pb
from services.vault.vault import NewValue
from shared.db import open_database
from shared.errors import Unavailable
from tests.harness.grpc_errors import error_info
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import (
    RunningVault,
    running_vault,
    vault_process,
    vault_settings,
)
from tests.vault.test_rewrap import wait_for_lock_waiter, wait_for_rewrap

KEYS = [f"shared/k{number}" for number in range(10)]
WORKERS, CALLS_EACH = 40, 10


async def test_two_replicas_answer_concurrent_reads_and_writes(
    database_url: str, master_key: bytes
) -> None:
    async with (
        vault_process(database_url, master_key) as (_, first),
        vault_process(database_url, master_key) as (_, second),
    ):
        for key in KEYS:
            await first.PutSecret(pb.PutSecretRequest(key_id=key, value=b"v0"))
        failures: collections.Counter[str] = collections.Counter()
        written: dict[str, set[bytes]] = collections.defaultdict(set)

        async def worker(number: int) -> None:
            stub = (first, second)[number % 2]
            for call in range(CALLS_EACH):
                key = KEYS[(number + call) % len(KEYS)]
                try:
                    if call % 4 == 0:
                        value = f"w{number}-{call}".encode()
                        await stub.PutSecret(
                            pb.PutSecretRequest(key_id=key, value=value), timeout=20
                        )
                        written[key].add(value)
                    else:
                        await stub.GetSecret(
                            pb.GetSecretRequest(key_id=key), timeout=20
                        )
                except grpc.aio.AioRpcError as error:
                    failures[f"{error.code().name}: {error.details()}"] += 1

        await asyncio.gather(*(worker(number) for number in range(WORKERS)))
        check = await second.VerifyAuditLog(pb.VerifyAuditLogRequest(), timeout=20)
        latest = {
            key: (await first.GetSecret(pb.GetSecretRequest(key_id=key))).value
            for key in KEYS
        }

    assert not failures
    assert check.intact, check
    # One event per call: none lost, none doubled by a retry.
    assert check.events_checked == len(KEYS) + WORKERS * CALLS_EACH
    assert all(latest[key] in written[key] for key in KEYS)


async def test_replica_seals_with_a_master_key_another_replica_added(
    database_url: str, master_key: bytes, issuer: LocalIssuer
) -> None:
    settings = vault_settings(database_url, master_key)
    async with (
        running_vault(settings, issuer) as rotating,
        running_vault(settings, issuer) as other,
    ):
        await other.client.put("before", b"v")
        await rotating.client.call("RotateMasterKey", pb.RotateMasterKeyRequest())
        await other.client.put("after", b"v")
        status = await other.client.status()
        rewrapped = await wait_for_rewrap(rotating)
        read_back = await rotating.client.get("after")

    db = await open_database(database_url)
    try:
        rows = await db.fetchall("SELECT key_id, master_version FROM vault_versions")
    finally:
        await db.close()
    assert dict((key, int(version)) for key, version in rows) == {
        "before": 2,
        "after": 2,
    }
    assert status.master_key_version == 2
    assert rewrapped.rewrap.rewrapped_versions == rewrapped.rewrap.total_versions == 2
    assert read_back.value == b"v"


async def test_a_batch_of_writes_looks_for_new_master_keys_once(
    vault: RunningVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = vault.runtime.store
    looked = 0
    master_keys = store.master_keys

    async def counted(*args: Any, **kwargs: Any) -> list[tuple[int, bytes]]:
        nonlocal looked
        looked += 1
        return await master_keys(*args, **kwargs)

    monkeypatch.setattr(store, "master_keys", counted)
    # Submitted in one turn of the event loop, so they share one batch.
    await asyncio.gather(
        *(
            vault.runtime.vault.put(
                "tester", NewValue(f"k{number}", b"v", None), 0, {}, 0
            )
            for number in range(20)
        )
    )

    assert looked == 1


async def test_a_chain_head_held_elsewhere_aborts_writes_without_an_outage(
    postgres_url: str, master_key: bytes, issuer: LocalIssuer
) -> None:
    # The head wait follows the database timeout: short, to keep the test so.
    settings = vault_settings(postgres_url, master_key, database_timeout_seconds=0.3)
    async with running_vault(settings, issuer) as vault:
        await vault.client.put("k", b"v1")
        await vault.client.get("k")
        holder = await psycopg.AsyncConnection.connect(postgres_url)
        try:
            await holder.execute(
                "SELECT 1 FROM vault_audit_head WHERE id = 1 FOR UPDATE"
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await vault.client.put("k", b"v2")
            during = await vault.client.status()
            waiting = asyncio.ensure_future(vault.client.put("k", b"v3"))
            await wait_for_lock_waiter(holder)
            await holder.rollback()
            written = await waiting
        finally:
            await holder.close()
        after = await vault.client.get("k")

    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert error_info(caught.value).reason == "AUDIT_CONFLICT"
    assert during.database_state == pb.DATABASE_STATE_AVAILABLE
    assert written.version == 2  # the refused write left no version behind
    assert (after.value, after.stale, after.source) == (b"v3", False, "database")


async def test_a_replica_stuck_holding_the_chain_head_is_cut_off(
    postgres_url: str, master_key: bytes, issuer: LocalIssuer
) -> None:
    settings = vault_settings(postgres_url, master_key, database_timeout_seconds=0.3)
    async with (
        running_vault(settings, issuer) as stuck,
        running_vault(settings, issuer) as healthy,
    ):
        await healthy.client.put("k", b"v1")
        store = stuck.runtime.store
        with pytest.raises(Unavailable):
            async with store.db.transaction() as tx:
                await store.lock_audit_head(tx)
                # Idle in its transaction, as a replica paused mid-batch is,
                # until PostgreSQL ends its session.
                written = await healthy.client.put("k", b"v2")
                await tx.fetchone("SELECT 1")
        got = await healthy.client.get("k")

    assert written.version == 2
    assert got.value == b"v2"
