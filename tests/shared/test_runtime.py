"""The shared runtime seen from a client: auth, scopes, errors, health, reflection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The services' modules are imported for their descriptors.
from empire.auth.v1 import auth_service_pb2  # noqa: F401
from empire.cache.v1 import cache_service_pb2  # noqa: F401
from empire.echo.v1 import echo_service_pb2 as echo_pb2
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from empire.llm.v1 import llm_service_pb2  # noqa: F401
from empire.vault.v1 import vault_service_pb2  # noqa: F401
from shared.access import rules_for_services
from shared.clients import ServiceClient, bearer, connect
from shared.echo import SERVICE_NAME, EchoServicer, echo_service
from shared.errors import Unavailable
from shared.server import Service
from tests.harness.grpc_errors import bad_request, error_info
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer


@pytest.fixture
async def echo(issuer: LocalIssuer):
    async with serve(
        echo_service(), test_server_settings("auth"), issuer.verifier()
    ) as running:
        async with running.channel() as channel:
            yield echo_grpc.EchoServiceStub(channel)


async def test_call_without_token_is_unauthenticated(echo) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo.Echo(echo_pb2.EchoRequest(message="hi"))

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_info(caught.value)
    assert info.reason == "MISSING_TOKEN"
    assert info.domain == "echo.empire-security"


async def test_token_without_scope_is_permission_denied(echo, issuer) -> None:
    token = issuer.token(["secrets:read"])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo.Echo(echo_pb2.EchoRequest(message="hi"), metadata=[bearer(token)])

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "MISSING_SCOPE"


async def test_qualified_scope_passes_only_per_resource_methods(echo, issuer):
    """`echo:call:x` names a resource Echo never checks: it must not stand in
    for `echo:call` there, or any qualifier would grant the whole scope."""
    token = issuer.token(["echo:call:anything"])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo.Echo(echo_pb2.EchoRequest(message="hi"), metadata=[bearer(token)])

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "MISSING_SCOPE"


def test_access_rules_mark_only_the_vaults_per_key_methods_per_resource() -> None:
    rules = rules_for_services(
        [
            "empire.auth.v1.AuthService",
            "empire.vault.v1.VaultService",
            "empire.cache.v1.CacheService",
            "empire.llm.v1.LlmService",
        ]
    )
    per_resource = {path for path, rule in rules.items() if rule.per_resource}

    vault = "/empire.vault.v1.VaultService/"
    assert f"{vault}GetSecret" in per_resource
    assert f"{vault}ListAuditEvents" in per_resource
    assert f"{vault}Backup" not in per_resource
    assert f"{vault}RotateMasterKey" not in per_resource
    assert all(path.startswith(vault) for path in per_resource)


async def test_token_with_scope_reaches_the_servicer_as_its_subject(echo, issuer):
    token = issuer.token(["echo:call"], subject="svc-a")

    response = await echo.Echo(
        echo_pb2.EchoRequest(message="hi"), metadata=[bearer(token)]
    )

    assert (response.message, response.caller) == ("hi", "svc-a")


async def test_admin_scope_passes_every_method(echo, issuer) -> None:
    response = await echo.Echo(
        echo_pb2.EchoRequest(message="hi"), metadata=[bearer(issuer.token(["*"]))]
    )
    assert response.message == "hi"


@pytest.mark.parametrize(
    "claims, reason",
    [
        pytest.param({"ttl": -120}, "EXPIRED", id="expired"),
        pytest.param({"aud": "someone-else"}, "WRONG_AUDIENCE", id="audience"),
        pytest.param({"iss": "https://evil.example"}, "WRONG_ISSUER", id="issuer"),
    ],
)
async def test_bad_tokens_are_unauthenticated_with_a_reason(
    echo, issuer, claims, reason
) -> None:
    token = issuer.token(["echo:call"], **claims)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo.Echo(echo_pb2.EchoRequest(message="hi"), metadata=[bearer(token)])

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == reason


async def test_token_from_another_issuer_key_is_unknown_key(echo) -> None:
    stranger = LocalIssuer()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo.Echo(
            echo_pb2.EchoRequest(message="hi"),
            metadata=[bearer(stranger.token(["echo:call"]))],
        )

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == "UNKNOWN_KEY"


async def test_malformed_request_names_the_field(echo, issuer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo.Echo(
            echo_pb2.EchoRequest(message=""),
            metadata=[bearer(issuer.token(["echo:call"]))],
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "EMPTY_MESSAGE"
    violation = bad_request(caught.value).field_violations[0]
    assert violation.field == "message"


async def test_public_method_needs_no_token(echo) -> None:
    response = await echo.PublicEcho(echo_pb2.EchoRequest(message="open"))
    assert response.message == "open"


async def test_streaming_method_is_authorized_and_maps_errors(echo, issuer) -> None:
    token = issuer.token(["echo:call"], subject="streamer")

    replies = [
        reply
        async for reply in echo.StreamEcho(
            echo_pb2.StreamEchoRequest(message="x", repeat=3), metadata=[bearer(token)]
        )
    ]
    assert [(r.message, r.caller) for r in replies] == [("x", "streamer")] * 3

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in echo.StreamEcho(
            echo_pb2.StreamEchoRequest(message="x", repeat=0), metadata=[bearer(token)]
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(caught.value).field_violations[0].field == "repeat"


class DeadlineRecordingEcho(EchoServicer):
    """The echo servicer, noting how much time each call had left on arrival."""

    def __init__(self) -> None:
        self.time_remaining: list[float | None] = []

    async def Echo(self, request, context):
        self.time_remaining.append(context.time_remaining())
        return await super().Echo(request, context)


@pytest.mark.parametrize("source", ["text", "function", "coroutine"])
async def test_client_helper_adds_token_and_deadline(issuer, source) -> None:
    token = issuer.token(["echo:call"], subject="via-helper")

    async def later() -> str:
        return token

    tokens = {"text": token, "function": lambda: token, "coroutine": later}
    recorder = DeadlineRecordingEcho()
    service = Service(
        name="echo",
        servicers=[(echo_grpc.add_EchoServiceServicer_to_server, recorder)],
        service_names=[SERVICE_NAME],
    )
    async with serve(service, test_server_settings("auth"), issuer.verifier()) as up:
        async with up.channel() as channel:
            stub = echo_grpc.EchoServiceStub(channel)
            client = ServiceClient(stub, token=tokens[source], timeout=2)

            response = await client.Echo(echo_pb2.EchoRequest(message="via helper"))
            await client.Echo(echo_pb2.EchoRequest(message="longer"), timeout=60)
            await stub.Echo(
                echo_pb2.EchoRequest(message="none"), metadata=[bearer(token)]
            )

    assert (response.message, response.caller) == ("via helper", "via-helper")
    default, overridden, without = recorder.time_remaining
    # gRPC carries the deadline as a coarse timeout, so allow for rounding.
    assert default == pytest.approx(2, abs=1)
    assert overridden == pytest.approx(60, abs=1)
    assert without is None  # what a call without the helper's deadline sees


async def test_health_reports_serving_for_the_service(issuer) -> None:
    async with serve(
        echo_service(), test_server_settings("auth"), issuer.verifier()
    ) as running:
        async with running.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service="empire.echo.v1.EchoService")
            )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_unknown_kids_refetch_the_jwks_at_most_once_per_interval(
    echo, issuer
) -> None:
    await echo.Echo(
        echo_pb2.EchoRequest(message="warm"),
        metadata=[bearer(issuer.token(["echo:call"]))],
    )
    fetches_before = issuer.jwks_fetches

    for _ in range(20):
        with pytest.raises(grpc.aio.AioRpcError):
            await echo.Echo(
                echo_pb2.EchoRequest(message="hi"),
                metadata=[bearer(LocalIssuer().token(["echo:call"]))],
            )

    assert issuer.jwks_fetches - fetches_before <= 1


async def test_connect_builds_a_client_for_a_named_service(issuer) -> None:
    settings = test_server_settings("auth")
    async with serve(echo_service(), settings, issuer.verifier()) as running:
        client = connect(
            "echo", running.target, token=lambda: issuer.token(["echo:call"])
        )
        response = await client.Echo(echo_pb2.EchoRequest(message="named"))
        await client.close()

    assert response.message == "named"


async def test_withdrawn_key_stops_verifying_once_the_set_is_older_than_max_age(
    issuer,
) -> None:
    from shared.authn import JwksTokenVerifier

    now = [1_000.0]
    published = {"keys": issuer.jwks()["keys"]}

    async def fetch() -> dict:
        return published

    verifier = JwksTokenVerifier(
        fetch,
        issuer=issuer.issuer,
        audience=issuer.audience,
        max_age_seconds=60,
        clock=lambda: now[0],
    )
    token = issuer.token(["echo:call"], ttl=10_000_000_000)
    await verifier.verify(token)

    published["keys"] = []
    now[0] += 30
    await verifier.verify(token)  # still within max-age: the cached set holds
    now[0] += 31
    with pytest.raises(Exception) as caught:
        await verifier.verify(token)
    assert getattr(caught.value, "reason", "") == "UNKNOWN_KEY"


@pytest.mark.parametrize(
    "token",
    ["", "abc", "!!!.x.y", "eyJhbGciOiJub25lIn0.e30.", "e30.e30.sig", "a" * 9000],
    ids=["empty", "no-dots", "not-base64", "alg-none", "no-alg", "huge"],
)
async def test_malformed_tokens_are_rejected_before_any_key_lookup(issuer, token):
    from shared.errors import Unauthenticated

    verifier = issuer.verifier()
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    assert caught.value.reason in {"MALFORMED_TOKEN", "BAD_ALGORITHM"}
    assert issuer.jwks_fetches == 0


async def test_a_token_that_never_comes_fails_the_call_within_its_timeout(
    echo,
) -> None:
    never = asyncio.Event()

    async def stalled_token() -> str:
        await never.wait()
        return "unreachable"

    client = ServiceClient(echo, token=stalled_token, timeout=0.2)

    with pytest.raises(Unavailable) as caught:
        # The outer bound only keeps a broken client from hanging the suite.
        await asyncio.wait_for(client.Echo(echo_pb2.EchoRequest(message="hi")), 30)

    assert caught.value.reason == "AUTH_UNAVAILABLE"
