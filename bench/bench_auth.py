"""Auth: VerifyToken (cold and repeated), local verification against raw PyJWT,
IssueToken and ExchangeApiKey, each beside its baseline."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import jwt
import psycopg

from bench import bench_echo
from bench.loadgen import SCALE, Result, measure, summarize
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
from tests.harness.db_fixtures import DEFAULT_DATABASE_URL, fresh_postgres_database
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer

# More distinct tokens than the verifiers remember, cycled in order, so every
# "cold" verification misses their caches.
COLD_POOL = 10_000
PAIRED_ROUNDS = 40
PAIRED_BATCH = 100
NEAR = "echo ceiling, re-measured"


async def run(report: Report) -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/auth.db"
        async with running_auth(auth_settings(url)) as auth:
            await _verify_rows(report, auth)
            await _local_rows(report, auth)
            await _write_rows(report, auth, "SQLite")
    with _postgres_url() as postgres_url:
        if postgres_url is not None:
            async with running_auth(auth_settings(postgres_url)) as auth:
                await _write_rows(report, auth, "PostgreSQL")


async def _verify_rows(report: Report, auth: AuthUnderTest) -> None:
    metadata = auth.as_admin()
    same = pb.VerifyTokenRequest(token=(await auth.issue()).access_token)
    repeated = await measure(lambda: auth.stub.VerifyToken(same, metadata=metadata))
    ceiling = await _adjacent_ceiling(report)
    runtime = await _runtime_echo()
    report.row(
        "auth VerifyToken gRPC, repeated token", repeated, ceiling, baseline_name=NEAR
    )
    report.row(
        "auth VerifyToken gRPC, repeated token",
        repeated,
        runtime,
        baseline_name="echo via shared runtime",
        note="the interceptor's own cost is the floor",
    )

    pool = itertools.cycle(
        [pb.VerifyTokenRequest(token=token) for token in _mint(auth, COLD_POOL)]
    )
    cold = await measure(lambda: auth.stub.VerifyToken(next(pool), metadata=metadata))
    report.row(
        "auth VerifyToken gRPC, cold (distinct tokens)",
        cold,
        ceiling,
        baseline_name=NEAR,
    )


async def _runtime_echo() -> Result:
    """Echo through the shared runtime (interceptor, JWT, log, metrics), now."""
    issuer = LocalIssuer()
    settings = test_server_settings("auth")
    async with serve(echo_service(), settings, issuer.verifier()) as running:
        async with running.channel() as channel:
            stub = echo_grpc.EchoServiceStub(channel)
            request = echo_pb.EchoRequest(message="ping")
            metadata = (bearer(issuer.token(["echo:call"])),)
            return await measure(lambda: stub.Echo(request, metadata=metadata))


async def _local_rows(report: Report, auth: AuthUnderTest) -> None:
    jwks_url = f"http://127.0.0.1:{auth.server.http_port}{JWKS_PATH}"
    verifier = JwksTokenVerifier(
        HttpJwksSource(jwks_url),
        issuer=auth.settings.issuer,
        audience=auth.settings.audience,
    )
    await verifier.refresh()
    key = auth.components.keyring.current
    public_key = key.public_key

    def raw_decode(token: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            public_key,
            algorithms=[key.algorithm],
            audience=auth.settings.audience,
            issuer=auth.settings.issuer,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )

    async def raw(token: str) -> None:
        raw_decode(token)

    token = (await auth.issue()).access_token
    cold_pool = _mint(auth, COLD_POOL)
    for label, tokens in (("same token", [token]), ("cold", cold_pool)):
        raw_tokens, local_tokens = itertools.cycle(tokens), itertools.cycle(tokens)
        baseline, local = await _paired(
            lambda t=raw_tokens: raw(next(t)),
            lambda t=local_tokens: verifier.verify(next(t)),
        )
        report.row(f"raw PyJWT decode, {label}", baseline)
        report.row(
            f"local verify (shared verifier), {label}",
            local,
            baseline,
            baseline_name=f"raw PyJWT, {label}",
        )

    async with _echo_verified_by(verifier) as echo:
        request = echo_pb.EchoRequest(message="ping")
        scoped = (await auth.issue(scopes=["echo:call"])).access_token
        call_metadata = (bearer(scoped),)
        result = await measure(lambda: echo.Echo(request, metadata=call_metadata))
    ceiling = await _adjacent_ceiling(report)
    report.row(
        "echo with an auth token, shared interceptor",
        result,
        ceiling,
        baseline_name=NEAR,
    )


async def _write_rows(report: Report, auth: AuthUnderTest, store: str) -> None:
    metadata = auth.as_admin()
    issue = pb.IssueTokenRequest(subject="bench", scopes=["cache:use"])
    issued = await measure(lambda: auth.stub.IssueToken(issue, metadata=metadata))
    ceiling = await _adjacent_ceiling(report)
    report.row(f"auth IssueToken gRPC, {store}", issued, ceiling, baseline_name=NEAR)

    created = await auth.stub.CreateApiKey(
        pb.CreateApiKeyRequest(subject="bench", scopes=["cache:use"]), metadata=metadata
    )
    exchange = pb.ExchangeApiKeyRequest(api_key=created.secret)
    exchanged = await measure(lambda: auth.stub.ExchangeApiKey(exchange))
    report.row(
        f"auth ExchangeApiKey gRPC, {store}", exchanged, ceiling, baseline_name=NEAR
    )


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


async def _adjacent_ceiling(report: Report) -> Result:
    """The echo ceiling measured again now, beside the rows that use it.

    On a shared machine the load drifts during a run; a ceiling measured
    minutes earlier would make the ratios say more about the neighbours.
    """
    ceiling: Result = await bench_echo.measure_ceiling()  # type: ignore[assignment]
    report.row("echo ceiling, re-measured", ceiling, report.ceiling)
    return ceiling


async def _paired(
    baseline: Callable[[], Awaitable[object]],
    candidate: Callable[[], Awaitable[object]],
) -> tuple[Result, Result]:
    """Both in-process calls, alternated in short batches so load drift hits both."""
    timings: tuple[list[float], list[float]] = ([], [])
    rounds = max(4, int(PAIRED_ROUNDS * SCALE))
    for round_number in range(rounds + 1):
        for call, latencies in ((baseline, timings[0]), (candidate, timings[1])):
            for _ in range(PAIRED_BATCH):
                started = time.perf_counter()
                await call()
                if round_number:  # the first round warms up
                    latencies.append(time.perf_counter() - started)
    return (
        summarize(timings[0], 0, sum(timings[0])),
        summarize(timings[1], 0, sum(timings[1])),
    )


@contextlib.asynccontextmanager
async def _echo_verified_by(verifier: JwksTokenVerifier) -> AsyncIterator[Any]:
    async with serve(echo_service(), test_server_settings("auth"), verifier) as echo:
        async with echo.channel() as channel:
            yield echo_grpc.EchoServiceStub(channel)


@contextlib.contextmanager
def _postgres_url() -> Iterator[str | None]:
    admin_url = os.environ.get("EMPIRE_TEST_DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        with psycopg.connect(admin_url, connect_timeout=3):
            pass
    except psycopg.Error:
        print("-- auth: PostgreSQL unreachable; its rows are skipped", flush=True)
        yield None
        return
    with fresh_postgres_database(admin_url) as url:
        yield url
