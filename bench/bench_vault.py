"""Vault: GetSecret over gRPC against the echo ceiling and a raw psycopg SELECT of
the same row, and PutSecret throughput, on PostgreSQL and SQLite."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator

import psycopg
import psycopg_pool

from bench.loadgen import Result, measure
from bench.report import Report
from empire.vault.v1 import vault_service_pb2 as pb
from shared.clients import bearer
from tests.harness.db_fixtures import DEFAULT_DATABASE_URL, fresh_postgres_database
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import RunningVault, running_vault, vault_settings

KEY_ID = "llm/openai"
VALUE = b"sk-" + b"x" * 48
CONCURRENCY = 32


async def run(report: Report) -> None:
    issuer = LocalIssuer()
    with _postgres_url() as postgres_url:
        if postgres_url is not None:
            settings = vault_settings(postgres_url, os.urandom(32))
            async with running_vault(settings, issuer) as vault:
                get = await _get_rows(report, vault, "PostgreSQL")
                raw = await _raw_select(postgres_url)
                report.row(
                    "raw psycopg primary-key SELECT (PostgreSQL)", raw, report.ceiling
                )
                report.row(
                    "vault GetSecret vs raw SELECT (PostgreSQL)",
                    get,
                    raw,
                    baseline_name="raw psycopg SELECT",
                )
                await _put_row(report, vault, "PostgreSQL")
    with tempfile.TemporaryDirectory() as directory:
        settings = vault_settings(f"sqlite:///{directory}/vault.db", os.urandom(32))
        async with running_vault(settings, issuer) as vault:
            await _get_rows(report, vault, "SQLite")
            await _put_row(report, vault, "SQLite")


async def _get_rows(report: Report, vault: RunningVault, store: str) -> Result:
    await vault.client.put(KEY_ID, VALUE)
    stub = vault.client.stub
    metadata = (bearer(vault.client.issuer.token(["secrets:read:llm/"])),)
    request = pb.GetSecretRequest(key_id=KEY_ID)
    result = await measure(
        lambda: stub.GetSecret(request, metadata=metadata), concurrency=CONCURRENCY
    )
    ceiling = report.ceiling
    note = ""
    if ceiling is not None and ceiling.p99_ms:
        note = f"p99 {result.p99_ms / ceiling.p99_ms:.1f}x echo p99"
    report.row(f"vault GetSecret gRPC ({store})", result, ceiling, note=note)
    return result


async def _put_row(report: Report, vault: RunningVault, store: str) -> None:
    stub = vault.client.stub
    metadata = (bearer(vault.client.issuer.token(["secrets:write"])),)
    # Spread over many key ids so version pruning is part of the steady state.
    keys = itertools.cycle([f"bench/k{number}" for number in range(256)])
    result = await measure(
        lambda: stub.PutSecret(
            pb.PutSecretRequest(key_id=next(keys), value=VALUE), metadata=metadata
        ),
        concurrency=CONCURRENCY,
    )
    report.row(f"vault PutSecret gRPC ({store})", result, report.ceiling)


async def _raw_select(url: str) -> Result:
    """The same row read with a bare pooled psycopg SELECT: no gRPC, no crypto."""
    sql = (
        "SELECT v.wrapped_key, v.ciphertext FROM vault_secrets s"
        " JOIN vault_versions v ON v.key_id = s.key_id"
        " AND v.version = s.current_version WHERE s.key_id = %s"
    )
    async with psycopg_pool.AsyncConnectionPool(
        url, min_size=10, max_size=10, open=False, kwargs={"autocommit": True}
    ) as pool:

        async def select() -> None:
            async with pool.connection() as conn:
                cursor = await conn.execute(sql, (KEY_ID,))
                await cursor.fetchone()

        return await measure(select, concurrency=CONCURRENCY)


@contextlib.contextmanager
def _postgres_url() -> Iterator[str | None]:
    admin_url = os.environ.get("EMPIRE_TEST_DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        with psycopg.connect(admin_url, connect_timeout=3):
            pass
    except psycopg.Error:
        print("-- vault: PostgreSQL unreachable; its rows are skipped", flush=True)
        yield None
        return
    with fresh_postgres_database(admin_url) as url:
        yield url
