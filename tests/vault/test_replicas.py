"""Several replicas on one database: the audit chain, writes and the keyring.

The concurrency test runs each replica as its own process, as in production,
so their transactions truly overlap instead of taking turns on one event loop.
"""

from __future__ import annotations

import asyncio
import collections

import grpc

from empire.vault.v1 import vault_service_pb2 as pb
from shared.db import open_database
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import running_vault, vault_process, vault_settings
from tests.vault.test_rewrap import wait_for_rewrap

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
