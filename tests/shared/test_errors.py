"""Every domain error maps to its own status; anything else is a generic INTERNAL."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from empire.echo.v1 import echo_service_pb2 as echo_pb2
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from shared import errors
from shared.clients import bearer
from shared.echo import EchoServicer, echo_service
from tests.harness.grpc_errors import error_info
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer


def _all_error_classes() -> list[type[errors.EmpireError]]:
    found, pending = [], [errors.EmpireError]
    while pending:
        cls = pending.pop()
        found.extend(cls.__subclasses__())
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("error_class", _all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_has_its_own_status_code(error_class) -> None:
    error = (
        error_class("field", "is bad")
        if error_class is errors.InvalidArgument
        else error_class("went wrong")
    )
    status = errors.to_rich_status(error, "vault")

    assert error_class.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK)
    assert status.code == error_class.code.value[0]
    assert status.details[0].type_url.endswith("google.rpc.ErrorInfo")


def test_status_codes_are_not_shared_between_error_classes() -> None:
    codes = [cls.code for cls in _all_error_classes()]
    assert len(codes) == len(set(codes))


class _BrokenEcho(EchoServicer):
    async def Echo(self, request: Any, context: Any) -> Any:
        raise RuntimeError("database password is hunter2")


async def test_unexpected_exception_is_internal_generic_and_logged(
    issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    service = echo_service()
    service.servicers = [(service.servicers[0][0], _BrokenEcho())]

    # Logs are captured until the server has stopped: its access line may be
    # written just after the caller has its answer.
    caplog.set_level(logging.INFO)
    async with serve(service, test_server_settings("auth"), issuer.verifier()) as run:
        async with run.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await echo_grpc.EchoServiceStub(channel).Echo(
                    echo_pb2.EchoRequest(message="x"),
                    metadata=[bearer(issuer.token(["echo:call"]))],
                )

    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in e.value.details()
    assert error_info(e.value).reason == "INTERNAL"
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "hunter2" in str(logged[0].exc_info[1])
    access = [r for r in caplog.records if r.name == "empire.access"]
    assert access and access[-1].rpc_code == "INTERNAL"


async def test_access_line_never_carries_the_token(
    issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    token = issuer.token(["echo:call"], subject="svc")
    caplog.set_level(logging.DEBUG)
    async with serve(
        echo_service(), test_server_settings("auth"), issuer.verifier()
    ) as run:
        async with run.channel() as channel:
            await echo_grpc.EchoServiceStub(channel).Echo(
                echo_pb2.EchoRequest(message="x"), metadata=[bearer(token)]
            )

    lines = [r for r in caplog.records if r.name == "empire.access"]
    assert len(lines) == 1 and lines[0].subject == "svc"
    assert all(token not in r.getMessage() for r in caplog.records)
    assert all(token not in str(r.__dict__) for r in caplog.records)
