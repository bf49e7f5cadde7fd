"""Master-key rotation: new writes use the new key, old data keys are rewrapped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
import psycopg
import pytest

from empire.vault.v1 import vault_service_pb2 as pb
from services.vault.envelope import SealedValue
from services.vault.records import AuditRecord, VersionRecord
from services.vault.store import VaultStore
from shared.db import Executor, UniqueViolation, open_database
from shared.errors import Unavailable
from tests.harness.grpc_errors import error_info
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import RunningVault, running_vault, vault_settings
from tests.vault.test_backup import restore, take_backup


async def wait_for_rewrap(
    vault: RunningVault, state: int = pb.REWRAP_STATE_COMPLETE
) -> pb.GetStatusResponse:
    for _ in range(400):
        status = await vault.client.status()
        if status.rewrap.state == state:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"the rewrap did not reach {state}: {status.rewrap}")


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


class HeldRewrap:
    """Holds the first rewrap batch between reading its rows and writing the
    first one back, until released; later batches pass straight through."""

    def __init__(self, store: VaultStore) -> None:
        self.reached = asyncio.Event()
        self.released = asyncio.Event()
        self._store_rewrapped = store.store_rewrapped

    async def __call__(
        self, tx: Executor, record: VersionRecord, sealed: SealedValue
    ) -> None:
        if not self.reached.is_set():
            self.reached.set()
            await self.released.wait()
        await self._store_rewrapped(tx, record, sealed)


async def hold_a_rewrap(
    vault: RunningVault, monkeypatch: pytest.MonkeyPatch
) -> HeldRewrap:
    """Rotates the master key and returns once its rewrap is held."""
    held = HeldRewrap(vault.runtime.store)
    monkeypatch.setattr(vault.runtime.store, "store_rewrapped", held)
    await vault.runtime.rotator.rotate(vault.runtime.audit, "tester")
    await asyncio.wait_for(held.reached.wait(), 10)
    return held


async def test_a_restore_during_a_rewrap_leaves_every_secret_readable(
    vault: RunningVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(5):
        await vault.client.put(f"k{number}", f"value-{number}".encode())
    blob = await take_backup(vault)  # its keyring holds master key 1 only
    held = await hold_a_rewrap(vault, monkeypatch)

    # The held batch has read rows of the replaced vault, wrapped by key 1
    # like the restored ones, and is about to wrap them by key 2.
    restoring = asyncio.ensure_future(restore(vault, blob, replace_existing=True))
    await asyncio.wait({restoring}, timeout=5)
    held.released.set()
    await restoring
    status = await wait_for_rewrap(vault)

    assert status.master_key_version == 1
    assert await master_versions(vault) == {1}
    for number in range(5):
        got = await vault.client.get(f"k{number}")
        assert got.value == f"value-{number}".encode()


async def test_a_rewrap_stopped_by_a_refused_restore_carries_on(
    vault: RunningVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(5):
        await vault.client.put(f"k{number}", f"value-{number}".encode())
    blob = await take_backup(vault)
    held = await hold_a_rewrap(vault, monkeypatch)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await restore(vault, blob)  # refused: the vault is not empty
    status = await wait_for_rewrap(vault)
    held.released.set()

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "VAULT_NOT_EMPTY"
    assert status.rewrap.rewrapped_versions == status.rewrap.total_versions == 5
    assert await master_versions(vault) == {2}


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


async def test_a_data_key_that_does_not_unwrap_is_skipped_and_reported(
    vault: RunningVault, caplog: pytest.LogCaptureFixture
) -> None:
    for number in range(6):
        await vault.client.put(f"k{number}", f"value-{number}".encode())
    db = await open_database(vault.settings.database_url)
    try:
        damaged = await db.fetchone(
            "SELECT wrapped_key FROM vault_versions WHERE key_id = 'k3'"
        )
        assert damaged is not None
        await db.execute(
            "UPDATE vault_versions SET wrapped_key = %s WHERE key_id = 'k3'",
            (bytes(len(damaged[0])),),
        )
    finally:
        await db.close()

    with caplog.at_level(logging.WARNING, logger="services.vault.rewrap"):
        await vault.client.call("RotateMasterKey", pb.RotateMasterKeyRequest())
        status = await wait_for_rewrap(vault, pb.REWRAP_STATE_FAILED)
    logged = "\n".join(record.getMessage() for record in caplog.records)

    assert status.rewrap.failed_versions == 1
    assert status.rewrap.rewrapped_versions == 5
    assert status.rewrap.total_versions == 6
    assert await master_versions(vault) == {1, 2}
    assert "version 1 of k3 (CIPHERTEXT_INVALID)" in logged
    assert "value-" not in logged and damaged[0].hex() not in logged
    for number in (0, 1, 2, 4, 5):
        assert (
            await vault.client.get(f"k{number}")
        ).value == f"value-{number}".encode()


@pytest.mark.postgres
async def test_rewrap_retries_after_losing_a_deadlock_to_a_writer(
    postgres_url: str,
    master_key: bytes,
    issuer: LocalIssuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.vault.rewrap")
    async with running_vault(vault_settings(postgres_url, master_key), issuer) as vault:
        await vault.client.put("a", b"va")
        await vault.client.put("b", b"vb")
        writer = await psycopg.AsyncConnection.connect(postgres_url)
        try:
            # The writer holds b; the rewrap takes a, then waits for b; the
            # writer then asks for a, and PostgreSQL aborts the rewrap's
            # transaction, which waited longer.
            await writer.execute("SET deadlock_timeout = '30s'")
            await writer.execute(
                "SELECT 1 FROM vault_versions WHERE key_id = 'b' FOR UPDATE"
            )
            await vault.runtime.rotator.rotate(vault.runtime.audit, "tester")
            await wait_for_lock_waiter(writer)
            await writer.execute(
                "UPDATE vault_versions SET create_time_ms = create_time_ms"
                " WHERE key_id = 'a'"
            )
            await writer.rollback()
        finally:
            await writer.close()
        status = await wait_for_rewrap(vault)

    assert "lost a conflict with a writer" in caplog.text
    assert status.rewrap.rewrapped_versions == status.rewrap.total_versions == 2
    assert status.rewrap.failed_versions == 0


async def wait_for_lock_waiter(conn: psycopg.AsyncConnection[object]) -> None:
    for _ in range(200):
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND pid <> pg_backend_pid()"
        )
        row = await cursor.fetchone()
        if row is not None and row[0]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the rewrap never waited for the writer's lock")


async def test_a_rotation_whose_event_cannot_be_recorded_does_not_happen(
    vault: RunningVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = vault.runtime.store
    append_audit = store.append_audit

    async def refusing(tx: Executor, events: Sequence[AuditRecord]) -> None:
        if any(event.action == "RotateMasterKey" for event in events):
            raise Unavailable("database unavailable", reason="DATABASE_UNAVAILABLE")
        await append_audit(tx, events)

    monkeypatch.setattr(store, "append_audit", refusing)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call("RotateMasterKey", pb.RotateMasterKeyRequest())
    monkeypatch.undo()
    status = await vault.client.status()

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # Fail-closed: no unrecorded key in the keyring, stored or in use.
    assert [version for version, _ in await store.master_keys()] == [1]
    assert vault.runtime.cipher.keyring.current_version == 1
    assert status.master_key_version == 1


async def test_a_rotation_that_keeps_clashing_with_replicas_is_aborted(
    vault: RunningVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def taken(*args: object, **kwargs: object) -> None:
        raise UniqueViolation("vault_master_keys_pkey")

    monkeypatch.setattr(vault.runtime.store, "insert_master_key", taken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call("RotateMasterKey", pb.RotateMasterKeyRequest())

    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert error_info(caught.value).reason == "AUDIT_CONFLICT"
