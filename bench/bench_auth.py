"""Auth: VerifyToken (cold and repeated), local verification against raw PyJWT,
IssueToken and ExchangeApiKey, each taken in turns with its baseline."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt

from bench.bench_echo import CEILING, RUNTIME
from bench.databases import fresh_postgres
from bench.loadgen import Call, alternate
from bench.report import Report
from empire.auth.v1 import auth_service_pb2 as pb
from empire.echo.v1 import echo_service_pb2 as echo_pb
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from services.auth.jwks_http import JWKS_PATH
from services.auth.tokens import Grant
from shared.authn import HttpJwksSource, JwksTokenVerifier
from shared.clients import bearer
from shared.echo import echo_service
from tests.auth.harness import AuthUnderTest, auth_settings, running_auth
from tests.harness.servers import serve, test_server_settings

# More distinct tokens than the verifiers remember, cycled in order, so every
# "cold" verification misses their caches.
COLD_POOL = 10_000


async def run(report: Report) -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/auth.db"
        async with running_auth(auth_settings(url)) as auth:
            cold_tokens = _mint(auth, COLD_POOL)
            await _verify_rows(report, auth, cold_tokens)
            await _local_rows(report, auth, cold_tokens)
            await _write_rows(report, auth, "SQLite")
    with fresh_postgres("auth") as postgres_url:
        if postgres_url is not None:
            async with running_auth(auth_settings(postgres_url)) as auth:
                await _write_rows(report, auth, "PostgreSQL")


async def _verify_rows(
    report: Report, auth: AuthUnderTest, cold_tokens: list[str]
) -> None:
    metadata = auth.as_admin()
    same = pb.VerifyTokenRequest(token=(await auth.issue()).access_token)
    pool = itertools.cycle([pb.VerifyTokenRequest(token=t) for t in cold_tokens])
    results = await report.echoes.beside(
        {
            "repeated": lambda: auth.stub.VerifyToken(same, metadata=metadata),
            "cold": lambda: auth.stub.VerifyToken(next(pool), metadata=metadata),
        },
        runtime=True,
    )
    ceiling, runtime = results[CEILING], results[RUNTIME]
    report.row("auth VerifyToken gRPC, repeated token", results["repeated"], ceiling)
    report.row(
        "auth VerifyToken gRPC, repeated token",
        results["repeated"],
        runtime,
        baseline_name="echo via shared runtime",
        note="the interceptor's own cost is the floor",
    )
    report.row(
        "auth VerifyToken gRPC, cold (distinct tokens)", results["cold"], ceiling
    )


async def _local_rows(
    report: Report, auth: AuthUnderTest, cold_tokens: list[str]
) -> None:
    jwks_url = f"http://127.0.0.1:{auth.server.http_port}{JWKS_PATH}"
    verifier = JwksTokenVerifier(
        HttpJwksSource(jwks_url),
        issuer=auth.settings.issuer,
        audience=auth.settings.audience,
    )
    await verifier.refresh()
    key = auth.components.keyring.current
    public_key = key.public_key

    async def raw(token: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            public_key,
            algorithms=[key.algorithm],
            audience=auth.settings.audience,
            issuer=auth.settings.issuer,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )

    token = (await auth.issue()).access_token
    for label, tokens in (("same token", [token]), ("cold", cold_tokens)):
        # One caller each: both are in-process CPU work, nothing to overlap.
        results = await alternate(
            {"raw": _cycling(raw, tokens), "local": _cycling(verifier.verify, tokens)},
            concurrency=1,
        )
        report.row(f"raw PyJWT decode, {label}", results["raw"])
        report.row(
            f"local verify (shared verifier), {label}",
            results["local"],
            results["raw"],
            baseline_name=f"raw PyJWT, {label}",
        )

    async with _echo_verified_by(verifier) as echo:
        request = echo_pb.EchoRequest(message="ping")
        scoped = (await auth.issue(scopes=["echo:call"])).access_token
        call_metadata = (bearer(scoped),)
        results = await report.echoes.beside(
            {"echo": lambda: echo.Echo(request, metadata=call_metadata)}
        )
    report.row(
        "echo with an auth token, shared interceptor", results["echo"], results[CEILING]
    )


async def _write_rows(report: Report, auth: AuthUnderTest, store: str) -> None:
    metadata = auth.as_admin()
    issue = pb.IssueTokenRequest(subject="bench", scopes=["cache:use"])
    created = await auth.stub.CreateApiKey(
        pb.CreateApiKeyRequest(subject="bench", scopes=["cache:use"]), metadata=metadata
    )
    exchange = pb.ExchangeApiKeyRequest(api_key=created.secret)
    results = await report.echoes.beside(
        {
            "issue": lambda: auth.stub.IssueToken(issue, metadata=metadata),
            "exchange": lambda: auth.stub.ExchangeApiKey(exchange),
        }
    )
    ceiling = results[CEILING]
    report.row(f"auth IssueToken gRPC, {store}", results["issue"], ceiling)
    report.row(f"auth ExchangeApiKey gRPC, {store}", results["exchange"], ceiling)


def _cycling(verify: Callable[[str], Awaitable[object]], tokens: list[str]) -> Call:
    """`verify` called on each of `tokens` in turn, round and round."""
    pool = itertools.cycle(tokens)
    return lambda: verify(next(pool))


def _mint(auth: AuthUnderTest, count: int) -> list[str]:
    """Tokens signed as IssueToken signs them, without a round trip each."""
    minter, settings = auth.components.minter, auth.settings
    grant = Grant(
        subject="bench",
        scopes=frozenset({"cache:use"}),
        roles=(),
        audience=settings.audience,
        ttl_seconds=settings.default_token_ttl_seconds,
    )
    return [minter.mint(grant).token for _ in range(count)]


@contextlib.asynccontextmanager
async def _echo_verified_by(verifier: JwksTokenVerifier) -> AsyncIterator[Any]:
    async with serve(echo_service(), test_server_settings("auth"), verifier) as echo:
        async with echo.channel() as channel:
            yield echo_grpc.EchoServiceStub(channel)
