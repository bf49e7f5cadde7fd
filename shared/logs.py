"""JSON log lines on stdout, configured once by a service's `__main__`."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

# Attributes every LogRecord has; anything else a caller passed in `extra=` is
# a structured field and goes into the JSON object.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, severity, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self._timestamp(record),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in record.__dict__.keys() - _STANDARD_ATTRIBUTES:
            if not key.startswith("_"):
                entry[key] = record.__dict__[key]
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    def _timestamp(self, record: logging.LogRecord) -> str:
        return _timestamp(record.created, int(record.msecs))


class _SuiteHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs (the access line may write to
    it directly, see `write_access_line`)."""


class _SecondText:
    """The text of the current second; many lines share one, formatted once."""

    second = -1
    text = ""


def _timestamp(created: float, msecs: int) -> str:
    second = int(created)
    if second != _SecondText.second:
        _SecondText.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _SecondText.second = second
    return f"{_SecondText.text}.{msecs:03d}Z"


access_logger = logging.getLogger("empire.access")
_root = logging.getLogger()
_escaped_methods: dict[str, str] = {}


def write_access_line(method: str, code: str, duration_ms: float, subject: str) -> None:
    """The one access line of an RPC, as the JSON formatter would write it.

    When the suite's own handler is the only one that would see the line, it
    is formatted and written here, without a LogRecord: the access line is
    written on every call, and the record, its formatting and the handler
    chain cost more than the RPC's own work on a fast path. Anywhere else
    (tests capturing records, other handlers, filters) it goes through
    `logging` as usual, with the same fields.
    """
    if not access_logger.isEnabledFor(logging.INFO):
        return
    handler = _direct_handler()
    if handler is None:
        _log_access(method, code, duration_ms, subject)
        return
    now = time.time()
    escaped = _escaped_methods.get(method)
    if escaped is None:
        escaped = _escaped_methods[method] = json.dumps(method)
    stamp = _timestamp(now, int((now - int(now)) * 1000))
    message = json.dumps(f"{method} {code} {duration_ms:.2f}ms")
    line = (
        f'{{"time": "{stamp}", "severity": "INFO", "logger": "empire.access", '
        f'"message": {message}, "rpc_method": {escaped}, "rpc_code": "{code}", '
        f'"duration_ms": {round(duration_ms, 3)!r}, '
        f'"subject": {json.dumps(subject)}}}\n'
    )
    try:
        handler.acquire()
        try:
            handler.stream.write(line)
            handler.stream.flush()
        finally:
            handler.release()
    except Exception:  # noqa: BLE001 - logging's own path reports it
        _log_access(method, code, duration_ms, subject)


def _direct_handler() -> _SuiteHandler | None:
    handlers = _root.handlers
    if len(handlers) != 1 or access_logger.handlers or access_logger.filters:
        return None
    handler = handlers[0]
    if (
        type(handler) is not _SuiteHandler
        or handler.filters
        or handler.level > logging.INFO
        or not access_logger.propagate
        or access_logger.disabled
    ):
        return None
    return handler


def _log_access(method: str, code: str, duration_ms: float, subject: str) -> None:
    access_logger.info(
        "%s %s %.2fms",
        method,
        code,
        duration_ms,
        extra={
            "rpc_method": method,
            "rpc_code": code,
            "duration_ms": round(duration_ms, 3),
            "subject": subject,
        },
    )


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every logger's records to `stream` (stdout) as JSON lines."""
    # The access line is written once per RPC: skip what these lines never
    # show (the caller's source line is a stack walk; thread and process
    # names are lookups) so logging costs microseconds, not tens of them.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _SuiteHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
