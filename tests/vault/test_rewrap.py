"""Master-key rotation: new writes use the new key, old data keys are rewrapped."""

from __future__ import annotations

import asyncio

from empire.vault.v1 import vault_service_pb2 as pb
from shared.db import open_database
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import RunningVault, running_vault


async def wait_for_rewrap(vault: RunningVault) -> pb.GetStatusResponse:
    for _ in range(400):
        status = await vault.client.status()
        if status.rewrap.state == pb.REWRAP_STATE_COMPLETE:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"the rewrap did not complete: {status.rewrap}")


async def master_versions(vault: RunningVault) -> set[int]:
    db = await open_database(vault.settings.database_url)
    try:
        rows = await db.fetchall("SELECT DISTINCT master_version FROM vault_versions")
    finally:
        await db.close()
    return {int(row[0]) for row in rows}


async def test_rotation_rewraps_every_data_key(vault: RunningVault) -> None:
    for number in range(30):
        await vault.client.put(f"k{number}", f"value-{number}".encode())

    rotated = await vault.client.call("RotateMasterKey", pb.RotateMasterKeyRequest())
    status = await wait_for_rewrap(vault)

    assert rotated.master_key_version == 2
    assert status.master_key_version == 2
    assert status.rewrap.rewrapped_versions == status.rewrap.total_versions == 30
    assert await master_versions(vault) == {2}
    for number in range(30):
        assert (
            await vault.client.get(f"k{number}")
        ).value == f"value-{number}".encode()


async def test_new_writes_use_the_new_master_key_at_once(vault: RunningVault) -> None:
    await vault.client.call("RotateMasterKey", pb.RotateMasterKeyRequest())
    await vault.client.put("fresh", b"v")

    db = await open_database(vault.settings.database_url)
    try:
        row = await db.fetchone(
            "SELECT master_version FROM vault_versions WHERE key_id = 'fresh'"
        )
    finally:
        await db.close()

    assert row is not None and int(row[0]) == 2


async def test_status_reports_the_store_and_availability(vault: RunningVault) -> None:
    status = await vault.client.status()

    assert status.database_state == pb.DATABASE_STATE_AVAILABLE
    assert status.store in ("postgres", "sqlite")
    assert status.master_key_version == 1


async def test_replica_learns_a_master_key_another_replica_added(
    vault: RunningVault, issuer: LocalIssuer
) -> None:
    async with running_vault(vault.settings, issuer) as replica:
        await replica.client.call("RotateMasterKey", pb.RotateMasterKeyRequest())
        await replica.client.put("written-by-replica", b"v")

        got = await vault.client.get("written-by-replica")

    assert got.value == b"v"
