"""A trivial echo service: the benchmark ceiling and the runtime's test subject."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from empire.echo.v1 import echo_service_pb2 as echo_pb2
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from shared.authn import current_principal
from shared.errors import InvalidArgument
from shared.server import Service

MAX_MESSAGE_CHARS = 4096
SERVICE_NAME = "empire.echo.v1.EchoService"


class EchoServicer(echo_grpc.EchoServiceServicer):
    async def Echo(
        self, request: echo_pb2.EchoRequest, context: Any
    ) -> echo_pb2.EchoResponse:
        _validate_message(request.message)
        return echo_pb2.EchoResponse(
            message=request.message, caller=current_principal().subject
        )

    async def PublicEcho(
        self, request: echo_pb2.EchoRequest, context: Any
    ) -> echo_pb2.EchoResponse:
        _validate_message(request.message)
        return echo_pb2.EchoResponse(message=request.message)

    async def StreamEcho(  # type: ignore[override]
        self, request: echo_pb2.StreamEchoRequest, context: Any
    ) -> AsyncIterator[echo_pb2.EchoResponse]:
        _validate_message(request.message)
        if not 1 <= request.repeat <= 100:
            raise InvalidArgument("repeat", "must be between 1 and 100")
        caller = current_principal().subject
        for _ in range(request.repeat):
            yield echo_pb2.EchoResponse(message=request.message, caller=caller)


class PlainEchoServicer(echo_grpc.EchoServiceServicer):
    """The same answer with nothing around it: the ceiling for `make bench`."""

    async def Echo(
        self, request: echo_pb2.EchoRequest, context: Any
    ) -> echo_pb2.EchoResponse:
        return echo_pb2.EchoResponse(message=request.message)


def _validate_message(message: str) -> None:
    if not message:
        raise InvalidArgument("message", "must not be empty", reason="EMPTY_MESSAGE")
    if len(message) > MAX_MESSAGE_CHARS:
        raise InvalidArgument(
            "message",
            f"must be at most {MAX_MESSAGE_CHARS} characters",
            reason="MESSAGE_TOO_LONG",
        )


def echo_service() -> Service:
    return Service(
        name="echo",
        servicers=[(echo_grpc.add_EchoServiceServicer_to_server, EchoServicer())],
        service_names=[SERVICE_NAME],
    )
