"""Tampered ciphertexts, a wrong master key, and what the database really holds."""

from __future__ import annotations

import logging
import os

import grpc
import pytest

from services.vault.app import create_service
from services.vault.errors import MasterKeyMismatch
from shared.db import open_database
from tests.harness.grpc_errors import error_info
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import RunningVault, running_vault, vault_settings


async def test_flipped_ciphertext_byte_is_refused(vault: RunningVault) -> None:
    await vault.client.put("k", b"value")
    db = await open_database(vault.settings.database_url)
    try:
        row = await db.fetchone("SELECT ciphertext FROM vault_versions")
        assert row is not None
        flipped = bytearray(row[0])
        flipped[-1] ^= 0x01
        await db.execute("UPDATE vault_versions SET ciphertext = %s", (bytes(flipped),))
    finally:
        await db.close()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.get("k")

    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert error_info(caught.value).reason == "CIPHERTEXT_INVALID"


async def test_flipped_wrapped_key_byte_is_refused(vault: RunningVault) -> None:
    await vault.client.put("k", b"value")
    db = await open_database(vault.settings.database_url)
    try:
        row = await db.fetchone("SELECT wrapped_key FROM vault_versions")
        assert row is not None
        flipped = bytearray(row[0])
        flipped[20] ^= 0x80
        await db.execute(
            "UPDATE vault_versions SET wrapped_key = %s", (bytes(flipped),)
        )
    finally:
        await db.close()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.get("k")

    assert caught.value.code() == grpc.StatusCode.DATA_LOSS


async def test_ciphertext_swapped_between_secrets_is_refused(
    vault: RunningVault,
) -> None:
    await vault.client.put("alpha", b"alpha-value")
    await vault.client.put("beta", b"beta-value")
    db = await open_database(vault.settings.database_url)
    try:
        rows = await db.fetchall(
            "SELECT key_id, wrapped_key, ciphertext FROM vault_versions ORDER BY key_id"
        )
        (_, alpha_key, alpha_text), (_, beta_key, beta_text) = rows
        # Move the whole envelope (data key and ciphertext) of beta onto alpha.
        await db.execute(
            "UPDATE vault_versions SET wrapped_key = %s, ciphertext = %s"
            " WHERE key_id = 'alpha'",
            (beta_key, beta_text),
        )
    finally:
        await db.close()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.get("alpha")

    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert (await vault.client.get("beta")).value == b"beta-value"


async def test_wrong_master_key_is_refused_at_start(
    database_url: str, master_key: bytes, issuer: LocalIssuer
) -> None:
    async with running_vault(vault_settings(database_url, master_key), issuer) as vault:
        await vault.client.put("k", b"value")

    with pytest.raises(MasterKeyMismatch) as caught:
        await create_service(vault_settings(database_url, os.urandom(32)))

    assert "master key" in str(caught.value)
    assert master_key.hex() not in str(caught.value)


async def test_database_rows_hold_no_plaintext(vault: RunningVault) -> None:
    plaintext = b"sk-PLAINTEXT-MARKER-4242"
    await vault.client.put("llm/openai", plaintext, labels={"team": "llm"})
    await vault.client.put("llm/openai", plaintext + b"-v2")
    await vault.client.get("llm/openai")

    db = await open_database(vault.settings.database_url)
    try:
        tables = [
            "vault_master_keys",
            "vault_secrets",
            "vault_versions",
            "vault_audit_events",
            "vault_audit_head",
        ]
        dump = b""
        for table in tables:
            for row in await db.fetchall(f"SELECT * FROM {table}"):
                for cell in row:
                    dump += (
                        bytes(cell)
                        if isinstance(cell, bytes | memoryview)
                        else (str(cell).encode())
                    )
    finally:
        await db.close()

    assert b"PLAINTEXT-MARKER" not in dump
    assert plaintext.hex().encode() not in dump
    assert vault.settings.master_key is not None
    assert vault.settings.master_key not in dump
    assert b"llm/openai" in dump  # the dump did read the secret's rows


async def test_values_never_reach_the_logs(
    vault: RunningVault, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    value = b"sk-LOG-MARKER-777"

    await vault.client.put("llm/openai", value)
    await vault.client.get("llm/openai")
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.client.put("llm/openai", value, expected_version=0)

    assert caplog.records, "nothing was logged, so nothing was checked"
    assert "LOG-MARKER" not in caplog.text
