"""Read-only fallback secrets from a mounted directory and environment variables."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from empire.vault.v1 import vault_service_pb2 as pb
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import RunningVault, running_vault, vault_settings


@pytest.fixture
async def fallback_vault(
    database_url: str,
    master_key: bytes,
    issuer: LocalIssuer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[RunningVault]:
    mounted = tmp_path / "mounted"
    (mounted / "llm").mkdir(parents=True)
    (mounted / "llm" / "openai").write_bytes(b"sk-from-file")
    (mounted / "auth").mkdir()
    (mounted / "auth" / "signing").write_bytes(b"private")
    monkeypatch.setenv("EMPIRE_VAULT_SECRET_LLM__ANTHROPIC", "sk-from-env")
    monkeypatch.setenv("EMPIRE_VAULT_SECRET_LLM__OPENAI", "sk-env-loses-to-file")
    settings = vault_settings(
        database_url, master_key, fallback_dir=mounted, fallback_env=True
    )
    async with running_vault(settings, issuer) as vault:
        yield vault


async def test_mounted_file_serves_a_secret_missing_from_the_database(
    fallback_vault: RunningVault,
) -> None:
    got = await fallback_vault.client.get("llm/openai")

    assert (got.value, got.source, got.version) == (b"sk-from-file", "file", 0)


async def test_environment_variable_serves_a_secret(
    fallback_vault: RunningVault,
) -> None:
    got = await fallback_vault.client.get("llm/anthropic")

    assert (got.value, got.source) == (b"sk-from-env", "environment")


async def test_database_takes_precedence_over_fallbacks(
    fallback_vault: RunningVault,
) -> None:
    await fallback_vault.client.put("llm/openai", b"sk-from-database")

    got = await fallback_vault.client.get("llm/openai")

    assert (got.value, got.source, got.version) == (b"sk-from-database", "database", 1)


async def test_fallback_secrets_still_need_the_scope(
    fallback_vault: RunningVault,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fallback_vault.client.get("auth/signing", scopes=["secrets:read:llm/"])

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_fallback_reads_are_audited(fallback_vault: RunningVault) -> None:
    await fallback_vault.client.get("llm/openai")

    events = await fallback_vault.client.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(key_id="llm/openai")
    )

    assert [(e.action, e.reason) for e in events.events] == [("GetSecret", "FROM_FILE")]


async def test_missing_everywhere_is_not_found(fallback_vault: RunningVault) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fallback_vault.client.get("llm/nothing")

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_fallback_values_over_the_size_limit_are_not_served_cut(
    sqlite_url: str,
    master_key: bytes,
    issuer: LocalIssuer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "certificate").write_bytes(b"x" * 17)
    monkeypatch.setenv("EMPIRE_VAULT_SECRET_LLM__TOKEN", "y" * 17)
    settings = vault_settings(
        sqlite_url,
        master_key,
        fallback_dir=tmp_path,
        fallback_env=True,
        max_value_bytes=16,
    )

    answers = []
    async with running_vault(settings, issuer) as vault:
        for key_id in ["llm/certificate", "llm/token"]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await vault.client.get(key_id)
            answers.append(caught.value.code())

    assert answers == [grpc.StatusCode.NOT_FOUND] * 2
