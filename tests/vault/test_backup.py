"""Backup streams a sealed snapshot; Restore verifies it all before writing."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from empire.vault.v1 import vault_service_pb2 as pb
from tests.harness.grpc_errors import error_info
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import RunningVault, running_vault, vault_settings


async def take_backup(vault: RunningVault) -> bytes:
    stream = vault.client.stub.Backup(
        pb.BackupRequest(), metadata=vault.client.metadata(), timeout=20
    )
    return b"".join([chunk.data async for chunk in stream])


async def restore(
    vault: RunningVault, blob: bytes, replace_existing: bool = False
) -> pb.RestoreResponse:
    def messages() -> Iterator[pb.RestoreRequest]:
        for start in range(0, len(blob), 1000):
            yield pb.RestoreRequest(
                data=blob[start : start + 1000], replace_existing=replace_existing
            )

    return await vault.client.stub.Restore(
        messages(), metadata=vault.client.metadata(), timeout=20
    )


async def test_backup_restores_into_a_new_vault(
    vault: RunningVault, tmp_path: Path, master_key: bytes, issuer: LocalIssuer
) -> None:
    await vault.client.put("llm/openai", b"sk-1")
    await vault.client.put("llm/openai", b"sk-2")
    await vault.client.put("other", b"x")
    blob = await take_backup(vault)

    settings = vault_settings(f"sqlite:///{tmp_path / 'fresh.db'}", master_key)
    async with running_vault(settings, issuer) as fresh:
        restored = await restore(fresh, blob)
        latest = await fresh.client.get("llm/openai")
        first = await fresh.client.get("llm/openai", version=1)
        chain = await fresh.client.call("VerifyAuditLog", pb.VerifyAuditLogRequest())

    assert (restored.secrets, restored.versions) == (2, 3)
    assert restored.audit_events >= 3
    assert (latest.value, first.value) == (b"sk-2", b"sk-1")
    assert chain.intact


async def test_backup_taken_during_writes_restores_consistently(
    postgres_url: str,
    master_key: bytes,
    tmp_path: Path,
    issuer: LocalIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_vault(vault_settings(postgres_url, master_key), issuer) as vault:
        await vault.client.put("k", b"v1")
        database = vault.runtime.store.db
        transaction = database.transaction
        written: list[pb.PutSecretResponse] = []

        @asynccontextmanager
        async def write_mid_dump() -> AsyncIterator[Any]:
            # A write commits right after the backup has read the audit
            # events, before it reads the chain head.
            async with transaction() as tx:
                fetchall = tx.fetchall

                async def fetch(sql: str, params: Any = None) -> Any:
                    rows = await fetchall(sql, params)
                    if "FROM vault_audit_events ORDER BY" in sql and not written:
                        written.append(await vault.client.put("k", b"v2"))
                    return rows

                tx.fetchall = fetch  # type: ignore[method-assign]
                yield tx

        monkeypatch.setattr(database, "transaction", write_mid_dump)
        blob = await take_backup(vault)
        monkeypatch.undo()

    settings = vault_settings(f"sqlite:///{tmp_path / 'fresh.db'}", master_key)
    async with running_vault(settings, issuer) as fresh:
        await restore(fresh, blob)
        after = await fresh.client.put("k", b"v3")
        chain = await fresh.client.call("VerifyAuditLog", pb.VerifyAuditLogRequest())

    # The snapshot is the vault before that write, whole: its chain and head
    # agree, and the restored secret goes on from version 1.
    assert written
    assert after.version == 2
    assert chain.intact


async def test_backup_holds_no_plaintext(vault: RunningVault) -> None:
    await vault.client.put("k", b"PLAINTEXT-MARKER")

    blob = await take_backup(vault)

    assert b"PLAINTEXT-MARKER" not in blob
    assert b"vault_secrets" not in blob  # the whole snapshot is encrypted


async def test_corrupted_backup_is_refused_and_changes_nothing(
    vault: RunningVault,
) -> None:
    await vault.client.put("k", b"before")
    blob = bytearray(await take_backup(vault))
    blob[len(blob) // 2] ^= 0x01
    await vault.client.put("k", b"after")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await restore(vault, bytes(blob), replace_existing=True)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "BACKUP_INTEGRITY_FAILURE"
    assert (await vault.client.get("k")).value == b"after"


async def test_backup_from_another_master_key_is_refused(
    vault: RunningVault, tmp_path: Path, issuer: LocalIssuer
) -> None:
    await vault.client.put("k", b"v")
    blob = await take_backup(vault)

    settings = vault_settings(f"sqlite:///{tmp_path / 'other.db'}", os.urandom(32))
    async with running_vault(settings, issuer) as other:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await restore(other, blob)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "BACKUP_INTEGRITY_FAILURE"


async def test_restore_into_a_non_empty_vault_needs_replace(
    vault: RunningVault,
) -> None:
    await vault.client.put("k", b"old")
    blob = await take_backup(vault)
    await vault.client.put("k", b"new")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await restore(vault, blob)
    unchanged = await vault.client.get("k")
    await restore(vault, blob, replace_existing=True)
    replaced = await vault.client.get("k")

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "VAULT_NOT_EMPTY"
    assert unchanged.value == b"new"
    assert replaced.value == b"old"


async def test_garbage_is_not_a_snapshot(vault: RunningVault) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await restore(vault, b"not a snapshot at all")

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "BACKUP_FORMAT_UNKNOWN"


async def test_restore_records_the_head_of_the_chain_it_replaces(
    vault: RunningVault,
) -> None:
    await vault.client.put("k", b"old")
    blob = await take_backup(vault)
    await vault.client.put("k", b"new")
    await vault.client.get("k")
    before = await vault.client.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(page_size=1000)
    )
    replaced_head = before.events[-1]

    restored = await restore(vault, blob, replace_existing=True)
    after = await vault.client.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(page_size=1000)
    )
    chain = await vault.client.call("VerifyAuditLog", pb.VerifyAuditLogRequest())

    anchor = after.events[-1]
    assert anchor.action == "Restore"
    assert anchor.sequence == restored.audit_events + 1
    assert anchor.version == replaced_head.sequence
    assert anchor.value_hmac == replaced_head.hash
    assert chain.intact
    assert chain.events_checked == anchor.sequence
