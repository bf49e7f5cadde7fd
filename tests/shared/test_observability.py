"""JSON log lines and Prometheus metrics, as an operator reads them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from empire.echo.v1 import echo_service_pb2 as echo_pb2
from empire.echo.v1 import echo_service_pb2_grpc as echo_grpc
from shared.clients import bearer
from shared.echo import echo_service
from shared.logs import JsonFormatter, configure_logging, write_access_line
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer


def test_log_lines_are_json_with_extra_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    try:
        logger.warning("provider %s is down", "openai", extra={"provider": "openai"})
    finally:
        logger.removeHandler(handler)

    line = json.loads(stream.getvalue())
    assert line["severity"] == "WARNING"
    assert line["message"] == "provider openai is down"
    assert line["provider"] == "openai"
    assert line["time"].endswith("Z")


async def test_metrics_endpoint_counts_rpcs_by_code(issuer: LocalIssuer) -> None:
    async with serve(
        echo_service(), test_server_settings("auth"), issuer.verifier()
    ) as run:
        async with run.channel() as channel:
            stub = echo_grpc.EchoServiceStub(channel)
            await stub.Echo(
                echo_pb2.EchoRequest(message="x"),
                metadata=[bearer(issuer.token(["echo:call"]))],
            )
            try:
                await stub.Echo(echo_pb2.EchoRequest(message="x"))
            except grpc.aio.AioRpcError:
                pass
        url = f"http://127.0.0.1:{run.http_port}/metrics"
        body = await asyncio.to_thread(_fetch, url)

    assert 'empire_rpc_total{code="OK",method="Echo",service="echo"}' in body
    assert 'code="UNAUTHENTICATED",method="Echo",service="echo"' in body
    assert "empire_rpc_duration_seconds_bucket" in body


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@pytest.fixture
def suite_logging() -> Iterator[io.StringIO]:
    """A stream for the suite's own logging; the root logger restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        # Configured in the test body: pytest adds its own capturing handlers
        # to the root between fixture setup and the test call.
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_access_line_written_directly_is_the_formatters_json(
    suite_logging: io.StringIO,
) -> None:
    configure_logging("INFO", suite_logging)
    subject = 'svc "quoted"\nnext'
    made = logging.getLogRecordFactory()
    records = 0

    def counting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
        nonlocal records
        records += 1
        return made(*args, **kwargs)

    logging.setLogRecordFactory(counting_factory)
    try:
        write_access_line("/empire.echo.v1.EchoService/Echo", "OK", 1.23456, subject)
    finally:
        logging.setLogRecordFactory(made)
    assert records == 0  # written directly, no LogRecord made
    direct = json.loads(suite_logging.getvalue())

    # The same line through a LogRecord and the formatter: equal, time aside.
    captured: list[logging.LogRecord] = []
    recorder = logging.Handler()
    recorder.emit = captured.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(recorder)
    try:
        write_access_line("/empire.echo.v1.EchoService/Echo", "OK", 1.23456, subject)
    finally:
        logging.getLogger().removeHandler(recorder)
    through_logging = json.loads(JsonFormatter().format(captured[0]))

    assert direct.pop("time").endswith("Z")
    through_logging.pop("time")
    assert direct == through_logging
    assert direct == {
        "severity": "INFO",
        "logger": "empire.access",
        "message": "/empire.echo.v1.EchoService/Echo OK 1.23ms",
        "rpc_method": "/empire.echo.v1.EchoService/Echo",
        "rpc_code": "OK",
        "duration_ms": 1.235,
        "subject": subject,
    }


def test_access_line_respects_the_level_and_other_handlers(
    suite_logging: io.StringIO,
) -> None:
    configure_logging("WARNING", suite_logging)
    write_access_line("/m/M", "OK", 1.0, "a")
    assert suite_logging.getvalue() == ""

    logging.getLogger().setLevel(logging.INFO)
    captured: list[logging.LogRecord] = []
    recorder = logging.Handler()
    recorder.emit = captured.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(recorder)
    try:
        write_access_line("/m/M", "NOT_FOUND", 2.0, "b")
    finally:
        logging.getLogger().removeHandler(recorder)
    # Both handlers saw it: the suite's JSON stream and the other one's record.
    assert json.loads(suite_logging.getvalue())["rpc_code"] == "NOT_FOUND"
    assert [(r.rpc_code, r.subject) for r in captured] == [("NOT_FOUND", "b")]
