"""Vault: GetSecret over gRPC against the echo ceiling and a raw psycopg SELECT of
the same row, and PutSecret throughput, on PostgreSQL and SQLite."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterator

import psycopg_pool

from bench.bench_echo import CEILING
from bench.databases import fresh_postgres
from bench.loadgen import Call
from bench.report import Report
from empire.vault.v1 import vault_service_pb2 as pb
from shared.clients import bearer
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import RunningVault, running_vault, vault_settings

KEY_ID = "llm/openai"
VALUE = b"sk-" + b"x" * 48
CONCURRENCY = 32
WRITE_KEYS = 256  # writes spread over this many key ids
RAW_SELECT = "raw psycopg primary-key SELECT"


async def run(report: Report) -> None:
    issuer = LocalIssuer()
    with fresh_postgres("vault") as postgres_url:
        if postgres_url is not None:
            settings = vault_settings(postgres_url, os.urandom(32))
            async with (
                running_vault(settings, issuer) as vault,
                _raw_select(postgres_url) as select,
            ):
                await _rows(report, vault, "PostgreSQL", select)
    with tempfile.TemporaryDirectory() as directory:
        settings = vault_settings(f"sqlite:///{directory}/vault.db", os.urandom(32))
        async with running_vault(settings, issuer) as vault:
            await _rows(report, vault, "SQLite", None)


async def _rows(
    report: Report, vault: RunningVault, store: str, select: Call | None
) -> None:
    """GetSecret and PutSecret (and the raw SELECT) in turns with the ceiling."""
    await vault.client.put(KEY_ID, VALUE)
    stub, issuer = vault.client.stub, vault.client.issuer
    read = (bearer(issuer.token(["secrets:read:llm/"])),)
    write = (bearer(issuer.token(["secrets:write"])),)
    get = pb.GetSecretRequest(key_id=KEY_ID)
    # Many key ids, so version pruning is part of the steady state.
    keys = itertools.cycle([f"bench/k{number}" for number in range(WRITE_KEYS)])
    calls: dict[str, Call] = {
        "get": lambda: stub.GetSecret(get, metadata=read),
        "put": lambda: stub.PutSecret(
            pb.PutSecretRequest(key_id=next(keys), value=VALUE), metadata=write
        ),
    }
    if select is not None:
        calls["select"] = select
    results = await report.echoes.beside(calls, concurrency=CONCURRENCY)

    ceiling, got = results[CEILING], results["get"]
    note = f"p99 {got.p99_ms / ceiling.p99_ms:.1f}x echo p99" if ceiling.p99_ms else ""
    report.row(f"vault GetSecret gRPC ({store})", got, ceiling, note=note)
    if select is not None:
        report.row(f"{RAW_SELECT} ({store})", results["select"], ceiling)
        report.row(
            f"vault GetSecret vs raw SELECT ({store})",
            got,
            results["select"],
            baseline_name="raw psycopg SELECT",
        )
    report.row(f"vault PutSecret gRPC ({store})", results["put"], ceiling)


@contextlib.asynccontextmanager
async def _raw_select(url: str) -> AsyncIterator[Call]:
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

        yield select
