"""A kill -9 in the middle of a master-key rewrap: the next start finishes it.

The vault runs as a real subprocess (`python -m services.vault`) so the kill
is a real SIGKILL, with no chance to clean up.
"""

from __future__ import annotations

import asyncio
import os
import signal

from empire.vault.v1 import vault_service_pb2 as pb
from empire.vault.v1 import vault_service_pb2_grpc
from shared.db import open_database
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import running_vault, vault_process, vault_settings

SECRETS = 120


async def status(stub: vault_service_pb2_grpc.VaultServiceStub) -> pb.GetStatusResponse:
    return await stub.GetStatus(pb.GetStatusRequest(), timeout=10, wait_for_ready=True)


async def test_kill_during_rewrap_then_restart_completes_it(
    database_url: str, master_key: bytes, issuer: LocalIssuer
) -> None:
    async with running_vault(vault_settings(database_url, master_key), issuer) as vault:
        for number in range(SECRETS):
            await vault.client.put(f"svc/k{number}", f"value-{number}".encode())

    slow = {
        "EMPIRE_VAULT_REWRAP_BATCH_SIZE": "4",
        "EMPIRE_VAULT_REWRAP_PAUSE_SECONDS": "0.05",
    }
    async with vault_process(database_url, master_key, **slow) as (process, stub):
        await stub.RotateMasterKey(pb.RotateMasterKeyRequest(), timeout=10)
        for _ in range(400):
            midway = await status(stub)
            if midway.rewrap.rewrapped_versions > 0:
                break
            await asyncio.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    assert midway.rewrap.state == pb.REWRAP_STATE_RUNNING
    assert 0 < midway.rewrap.rewrapped_versions < SECRETS

    async with vault_process(database_url, master_key) as (_, stub):
        for _ in range(400):
            final = await status(stub)
            if final.rewrap.state == pb.REWRAP_STATE_COMPLETE:
                break
            await asyncio.sleep(0.05)
        values = [
            (
                await stub.GetSecret(
                    pb.GetSecretRequest(key_id=f"svc/k{n}"), timeout=10
                )
            ).value
            for n in range(SECRETS)
        ]

    assert final.rewrap.state == pb.REWRAP_STATE_COMPLETE
    assert final.rewrap.rewrapped_versions == final.rewrap.total_versions == SECRETS
    assert values == [f"value-{n}".encode() for n in range(SECRETS)]
    db = await open_database(database_url)
    try:
        rows = await db.fetchall("SELECT DISTINCT master_version FROM vault_versions")
    finally:
        await db.close()
    assert {int(row[0]) for row in rows} == {2}
