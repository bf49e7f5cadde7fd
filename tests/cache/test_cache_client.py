"""The client-side helper: cache-aside for unary RPCs through the cache service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from empire.cache.v1 import cache_service_pb2 as pb
from shared.authn import TokenVerifier, bearer_token
from shared.cache_client import CachedMethod, CachingInterceptor, ResponseCache
from shared.clients import ServiceClient, bearer, connect
from tests.cache.conftest import cache_settings, put_route, running_cache
from tests.harness.tokens import LocalIssuer

CHECK = "/grpc.health.v1.Health/Check"


class CountingOrigin(health_pb2_grpc.HealthServicer):
    """A real gRPC origin that counts its calls and fails on command."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False
        self.delay_s = 0.0
        self.status = health_pb2.HealthCheckResponse.SERVING
        # Per-caller answers, by the caller's bearer token.
        self.status_for: dict[str, int] = {}

    async def Check(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "origin down")
        token = bearer_token(context.invocation_metadata()) or ""
        return health_pb2.HealthCheckResponse(
            status=self.status_for.get(token, self.status)
        )


@contextlib.asynccontextmanager
async def origin_server() -> AsyncIterator[tuple[CountingOrigin, str]]:
    origin = CountingOrigin()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(origin, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield origin, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def cached_stub(
    cache: ServiceClient,
    target: str,
    method: CachedMethod | None = None,
    verifier: TokenVerifier | None = None,
) -> AsyncIterator[health_pb2_grpc.HealthStub]:
    method = method or CachedMethod(
        "health_checks", tags=lambda request, response: [f"svc:{request.service}"]
    )
    response_cache = ResponseCache(cache, {CHECK: method}, verifier=verifier)
    channel = grpc.aio.insecure_channel(
        target, interceptors=[CachingInterceptor(response_cache)]
    )
    try:
        yield health_pb2_grpc.HealthStub(channel)
    finally:
        await response_cache.close()
        await channel.close()


def check(service: str = "a") -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


async def test_second_call_is_answered_from_the_cache(sqlite_cache_url, issuer):
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target) as stub,
    ):
        await put_route(cache, route_id="health_checks")
        first = await stub.Check(check())
        second = await stub.Check(check())
        other = await stub.Check(check("b"))

    assert first == second
    assert second.status == health_pb2.HealthCheckResponse.SERVING
    assert origin.calls == 2  # "a" once, "b" once
    assert other.status == health_pb2.HealthCheckResponse.SERVING


async def test_concurrent_calls_reach_the_origin_once(sqlite_cache_url, issuer):
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target) as stub,
    ):
        await put_route(cache, route_id="health_checks")
        origin.delay_s = 0.2
        responses = await asyncio.gather(*(stub.Check(check()) for _ in range(20)))

    assert origin.calls == 1
    assert len({r.SerializeToString() for r in responses}) == 1


async def test_tag_purge_sends_the_next_call_to_the_origin(sqlite_cache_url, issuer):
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target) as stub,
    ):
        await put_route(cache, route_id="health_checks")
        await stub.Check(check())
        await cache.Invalidate(pb.InvalidateRequest(tag="svc:a"))
        await stub.Check(check())

    assert origin.calls == 2


async def test_origin_failure_is_answered_stale_within_stale_if_error(
    sqlite_cache_url, issuer
):
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target) as stub,
    ):
        await put_route(cache, route_id="health_checks", stale_if_error_seconds=600)
        await stub.Check(check())
        await cache.Invalidate(
            pb.InvalidateRequest(route_id="health_checks", key_prefix=CHECK, soft=True)
        )
        origin.failing = True
        served = await stub.Check(check())
        with pytest.raises(grpc.aio.AioRpcError) as no_copy:
            await stub.Check(check("never-cached"))

    assert served.status == health_pb2.HealthCheckResponse.SERVING
    assert no_copy.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_calls_go_to_the_origin_when_the_cache_is_down(issuer):
    cache = connect("cache", "127.0.0.1:1", token="unused", timeout=0.5)
    async with origin_server() as (origin, target), cached_stub(cache, target) as stub:
        responses = [await stub.Check(check()) for _ in range(2)]
    await cache.close()

    assert origin.calls == 2
    assert all(r.status == health_pb2.HealthCheckResponse.SERVING for r in responses)


async def test_unconfigured_methods_pass_through(sqlite_cache_url, issuer):
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
    ):
        response_cache = ResponseCache(cache, {})
        channel = grpc.aio.insecure_channel(
            target, interceptors=[CachingInterceptor(response_cache)]
        )
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(check())
        await stub.Check(check())
        await channel.close()

    assert origin.calls == 2


async def test_stale_answer_is_served_while_one_caller_refreshes_behind_it(
    sqlite_cache_url, issuer
):
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target) as stub,
    ):
        await put_route(
            cache, route_id="health_checks", stale_while_revalidate_seconds=600
        )
        await stub.Check(check())
        await cache.Invalidate(
            pb.InvalidateRequest(route_id="health_checks", key_prefix=CHECK, soft=True)
        )
        origin.status = health_pb2.HealthCheckResponse.NOT_SERVING
        stale = await stub.Check(check())
        fresh = stale
        for _ in range(100):
            fresh = await stub.Check(check())
            if fresh.status != stale.status:
                break
            await asyncio.sleep(0.02)

    assert stale.status == health_pb2.HealthCheckResponse.SERVING
    assert fresh.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert origin.calls == 2


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def statuses(
    stub: health_pb2_grpc.HealthStub, tokens: list[str], *extra: tuple[str, str]
) -> list[int]:
    return [
        (await stub.Check(check(), metadata=(bearer(token), *extra))).status
        for token in tokens
    ]


async def test_callers_with_different_tokens_never_get_each_others_response(
    sqlite_cache_url, issuer
):
    alice, bob = issuer.token(subject="alice"), issuer.token(subject="bob")
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target) as stub,
    ):
        await put_route(cache, route_id="health_checks")
        origin.status_for = {alice: SERVING, bob: NOT_SERVING}
        seen = await statuses(stub, [alice, bob, alice, bob])

    assert seen == [SERVING, NOT_SERVING, SERVING, NOT_SERVING]
    assert origin.calls == 2  # each caller's second call was a hit


async def test_callers_with_credentials_other_than_a_bearer_token_skip_the_cache(
    sqlite_cache_url, issuer
):
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target) as stub,
    ):
        await put_route(cache, route_id="health_checks")
        alice = await stub.Check(
            check(), metadata=[("authorization", "Basic YWxpY2U=")]
        )
        origin.status = NOT_SERVING  # what the origin tells bob
        bob = await stub.Check(check(), metadata=[("authorization", "Basic Ym9i")])

    assert (alice.status, bob.status) == (SERVING, NOT_SERVING)
    assert origin.calls == 2


async def test_with_a_verifier_entries_follow_the_subject_not_the_token(
    sqlite_cache_url, issuer
):
    first, second = issuer.token(subject="alice"), issuer.token(subject="alice")
    forged = LocalIssuer().token(subject="alice")  # signed by a key nobody trusts
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target, verifier=issuer.verifier()) as stub,
    ):
        await put_route(cache, route_id="health_checks")
        origin.status_for = {forged: NOT_SERVING}
        seen = await statuses(stub, [first, second, forged, forged])

    assert seen == [SERVING, SERVING, NOT_SERVING, NOT_SERVING]
    # One call for alice's two tokens; the forged token skips the cache.
    assert origin.calls == 3


async def test_a_narrower_token_of_the_same_subject_is_not_served_a_broader_ones(
    sqlite_cache_url, issuer
):
    broad = issuer.token(["admin:all"], subject="alice")
    narrow = issuer.token(["health:read"], subject="alice")
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target, verifier=issuer.verifier()) as stub,
    ):
        await put_route(cache, route_id="health_checks")
        origin.status_for = {narrow: NOT_SERVING}  # the origin tells them apart
        seen = await statuses(stub, [broad, narrow, narrow])

    assert seen == [SERVING, NOT_SERVING, NOT_SERVING]
    assert origin.calls == 2


async def test_a_shared_method_answers_every_caller_from_one_entry(
    sqlite_cache_url, issuer
):
    alice, bob = issuer.token(subject="alice"), issuer.token(subject="bob")
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target, CachedMethod("health_checks", shared=True)) as stub,
    ):
        await put_route(cache, route_id="health_checks")
        seen = await statuses(stub, [alice, bob, alice])

    assert seen == [SERVING, SERVING, SERVING]
    assert origin.calls == 1


async def test_vary_reads_the_calls_metadata(sqlite_cache_url, issuer):
    method = CachedMethod(
        "health_checks",
        vary=lambda request, metadata: {"x-region": metadata.get("x-region", "")},
        shared=True,
    )
    token = issuer.token(subject="alice")
    async with (
        running_cache(cache_settings(sqlite_cache_url), issuer) as cache,
        origin_server() as (origin, target),
        cached_stub(cache, target, method) as stub,
    ):
        await put_route(cache, route_id="health_checks", vary_on=["x-region"])
        await statuses(stub, [token], ("x-region", "eu"))
        origin.status = NOT_SERVING
        seen = await statuses(stub, [token], ("x-region", "us"))
        seen += await statuses(stub, [token], ("x-region", "eu"))

    assert seen == [NOT_SERVING, SERVING]
    assert origin.calls == 2
