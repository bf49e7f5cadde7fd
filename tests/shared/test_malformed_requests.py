"""Request bytes that do not parse are INVALID_ARGUMENT with a reason, never
UNKNOWN or INTERNAL, and the caller is still authenticated first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from empire.vault.v1 import vault_service_pb2 as vault_pb2
from empire.vault.v1 import vault_service_pb2_grpc as vault_grpc
from shared.clients import bearer
from shared.echo import echo_service
from shared.server import Service
from tests.harness.grpc_errors import bad_request, error_info
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer

ECHO = "/empire.echo.v1.EchoService/"
# A length-delimited field 1 (EchoRequest.message) that claims 5 bytes and has 2.
TRUNCATED = b"\x0a\x05ab"
# The same field holding bytes that are not UTF-8 in a `string` field.
NOT_UTF8 = b"\x0a\x02\xff\xfe"


@pytest.fixture
async def channel(issuer: LocalIssuer) -> AsyncIterator[grpc.aio.Channel]:
    async with serve(
        echo_service(), test_server_settings("auth"), issuer.verifier()
    ) as running:
        async with running.channel() as channel:
            yield channel


def _assert_malformed(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "MALFORMED_REQUEST"
    assert bad_request(error).field_violations[0].field == "request"


@pytest.mark.parametrize("payload", [TRUNCATED, NOT_UTF8], ids=["truncated", "utf8"])
@pytest.mark.parametrize("method", ["Echo", "PublicEcho"])
async def test_unary_request_that_does_not_parse_is_invalid_argument(
    channel, issuer, method: str, payload: bytes
) -> None:
    call = channel.unary_unary(ECHO + method)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(payload, metadata=[bearer(issuer.token(["echo:call"]))])

    _assert_malformed(caught.value)


async def test_server_streaming_request_that_does_not_parse_is_invalid_argument(
    channel, issuer
) -> None:
    call = channel.unary_stream(ECHO + "StreamEcho")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call(TRUNCATED, metadata=[bearer(issuer.token(["echo:call"]))]):
            pass

    _assert_malformed(caught.value)


async def test_caller_without_a_token_learns_nothing_about_the_body(channel) -> None:
    call = channel.unary_unary(ECHO + "Echo")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(TRUNCATED)

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == "MISSING_TOKEN"


class _CountingRestore(vault_grpc.VaultServiceServicer):
    """Reads a client stream to its end, as the vault's Restore does."""

    async def Restore(self, request_iterator: Any, context: Any) -> Any:
        count = 0
        async for _ in request_iterator:
            count += 1
        return vault_pb2.RestoreResponse(secrets=count)


async def test_client_stream_with_a_message_that_does_not_parse_is_invalid_argument(
    issuer: LocalIssuer,
) -> None:
    service = Service(
        name="vault",
        servicers=[(vault_grpc.add_VaultServiceServicer_to_server, _CountingRestore())],
        service_names=["empire.vault.v1.VaultService"],
    )
    good = vault_pb2.RestoreRequest(replace_existing=True).SerializeToString()
    async with serve(service, test_server_settings("vault"), issuer.verifier()) as up:
        async with up.channel() as channel:
            call = channel.stream_unary("/empire.vault.v1.VaultService/Restore")
            metadata = [bearer(issuer.token(["*"]))]

            whole = await call(iter([good, good]), metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(iter([good, b"\xff\xff\xff"]), metadata=metadata)

    assert whole == vault_pb2.RestoreResponse(secrets=2).SerializeToString()
    _assert_malformed(caught.value)
