"""The one place where provider SDK exceptions become classified failures.

Every exception the `openai` and `anthropic` SDKs (and the HTTP layer under
them) raise is mapped here to an `ErrorClass`, which decides whether the
router retries, waits, fails over or gives up. Messages are built here too, so
that no key leaks: only the provider's own reason for a rejection is kept,
shortened and flagged `provider_text` so that the router cuts the prompt out
of it before it is repeated.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from types import TracebackType
from typing import Any

import anthropic
import httpx2
import openai
import pydantic

from services.llm.models import ErrorClass, ProviderFailure

logger = logging.getLogger(__name__)

MAX_REASON_CHARS = 200

_CONTEXT_PATTERNS = re.compile(
    r"context[_ ]length|context window|maximum context|prompt is too long|"
    r"too many tokens|reduce the length",
    re.IGNORECASE,
)
_POLICY_PATTERNS = re.compile(
    r"content[_ ]policy|content[_ ]filter|safety system|content management policy",
    re.IGNORECASE,
)
_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length"}
_POLICY_CODES = {"content_policy_violation", "content_filter"}

_STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)
_TIMEOUT_ERRORS = (
    openai.APITimeoutError,
    anthropic.APITimeoutError,
    httpx2.TimeoutException,
)
_CONNECTION_ERRORS = (
    openai.APIConnectionError,
    anthropic.APIConnectionError,
    httpx2.TransportError,
)
_MALFORMED_ERRORS = (
    json.JSONDecodeError,
    pydantic.ValidationError,
    openai.APIResponseValidationError,
    anthropic.APIResponseValidationError,
    httpx2.DecodingError,
    UnicodeDecodeError,
)
# What the HTTP client raises when it cannot use the endpoint at all (a URL it
# refuses, a port out of range): the provider's configuration is at fault.
_HTTP_CLIENT_ERRORS = (httpx2.HTTPError, httpx2.InvalidURL)
_HTTP_CLIENT_MODULES = ("httpx2.", "httpcore2.", "anyio.", "h11.", "h2.")

# The status each error type of an error event stands for: Anthropic's types
# (an `event: error` inside a stream that began with HTTP 200), and OpenAI's
# `server_error`. An unknown type (vLLM's `BadRequestError`, none at all) is
# read from the event's numeric `code`, else from a message naming the context
# window or the content policy, and only then taken for a server error.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def classify(error: BaseException) -> ProviderFailure:
    """The classified failure for an exception raised by a provider call.

    Raises `error` itself again when it is not a provider failure at all (a bug
    in this service must surface as INTERNAL, not as a failover).
    """
    if isinstance(error, ProviderFailure):
        return error
    if isinstance(error, _STATUS_ERRORS):
        return classify_status(error.status_code, _body_of(error), error.response)
    if isinstance(error, _TIMEOUT_ERRORS):
        return ProviderFailure(ErrorClass.TIMEOUT, "the provider timed out")
    if isinstance(error, _CONNECTION_ERRORS):
        return ProviderFailure(
            ErrorClass.CONNECTION, "the connection to the provider failed"
        )
    if isinstance(error, _MALFORMED_ERRORS):
        return ProviderFailure(
            ErrorClass.MALFORMED_RESPONSE, "the provider sent a malformed response"
        )
    if isinstance(error, anthropic.CredentialsError):
        return ProviderFailure(
            ErrorClass.CREDENTIALS_UNAVAILABLE, "the provider's credentials are missing"
        )
    if isinstance(error, openai.ContentFilterFinishReasonError):
        return ProviderFailure(
            ErrorClass.CONTENT_POLICY, "the provider filtered the answer"
        )
    if isinstance(error, openai.APIError) and _body_of(error):
        # OpenAI's SDK raises a bare APIError for an error inside a stream.
        return classify_status(0, _body_of(error))
    if isinstance(error, openai.OpenAIError | anthropic.AnthropicError):
        # An SDK error of no known kind: the provider misbehaved, so it is
        # failed over like a bad response.
        return ProviderFailure(
            ErrorClass.MALFORMED_RESPONSE, "the provider reported an error"
        )
    if isinstance(error, _HTTP_CLIENT_ERRORS) or _raised_in_http_client(error):
        # Not always wrapped by the SDKs (an invalid URL is refused before the
        # request is sent; a port out of range fails inside the connect).
        logger.warning(
            "the HTTP client could not use a provider's endpoint: %s",
            type(error).__name__,
        )
        return ProviderFailure(
            ErrorClass.CONNECTION, "the provider's endpoint could not be used"
        )
    raise error


def classify_status(
    status: int, body: dict[str, Any], response: httpx2.Response | None = None
) -> ProviderFailure:
    """The failure for an HTTP error status with its decoded error body.

    A status below 400 means an error event inside a stream that began well
    (Anthropic's `event: error` comes with the stream's HTTP 200): it is
    classified by the error type its body names, as that type's status would be.
    """
    if status >= 400:
        effective, answered = status, f"answered HTTP {status}"
    else:
        error_type = str(body.get("type") or "")
        effective = _event_status(error_type, body)
        named = error_type if error_type in _ERROR_TYPE_STATUS else "unknown type"
        answered = f"sent an error event ({named})"
    reason = _reason_of(body)
    code = str(body.get("code") or "")

    if effective == 429:
        return ProviderFailure(
            ErrorClass.RATE_LIMITED,
            "the provider is rate limiting",
            http_status=status,
            retry_after=retry_after_seconds(response),
        )
    if effective in (401, 402, 403):
        # The provider's text may quote part of the key: never pass it on.
        return ProviderFailure(
            ErrorClass.AUTHENTICATION,
            "the provider rejected the API key or account",
            http_status=status,
        )
    if effective in (408, 409) or effective >= 500:
        return ProviderFailure(
            ErrorClass.SERVER_ERROR, f"the provider {answered}", http_status=status
        )
    if code in _CONTEXT_CODES or effective == 413 or _CONTEXT_PATTERNS.search(reason):
        error_class, fallback = (
            ErrorClass.CONTEXT_LENGTH_EXCEEDED,
            "the prompt exceeds the model's context window",
        )
    elif code in _POLICY_CODES or _POLICY_PATTERNS.search(reason):
        error_class, fallback = (
            ErrorClass.CONTENT_POLICY,
            "the provider refused the content",
        )
    else:
        error_class, fallback = ErrorClass.BAD_REQUEST, f"the provider {answered}"
    shortened = _shorten(reason)
    return ProviderFailure(
        error_class,
        shortened or fallback,
        http_status=status,
        provider_text=bool(shortened),
    )


def _event_status(error_type: str, body: dict[str, Any]) -> int:
    """The HTTP status an error event inside a stream stands for."""
    known = _ERROR_TYPE_STATUS.get(error_type)
    if known is not None:
        return known
    code = body.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        return code
    # Without a status to go by, a refusal of the request's own making must
    # still be told from an outage: retried in place, it would fail again.
    named = str(code or "")
    reason = _reason_of(body)
    if named in _CONTEXT_CODES | _POLICY_CODES:
        return 400
    if _CONTEXT_PATTERNS.search(reason) or _POLICY_PATTERNS.search(reason):
        return 400
    return 500


def retry_after_seconds(response: httpx2.Response | None) -> float | None:
    """The wait a 429 asks for, from `retry-after-ms` or `Retry-After`."""
    if response is None:
        return None
    headers = response.headers
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _raised_in_http_client(error: BaseException) -> bool:
    """Whether `error` (or any error of its group) came out of the HTTP stack."""
    if isinstance(error, BaseExceptionGroup):
        return any(_raised_in_http_client(e) for e in error.exceptions)
    return any(
        _module_of(frame).startswith(_HTTP_CLIENT_MODULES)
        for frame in _frames(error.__traceback__)
    )


def _frames(traceback: TracebackType | None) -> list[Any]:
    frames = []
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    return frames


def _module_of(frame: Any) -> str:
    name = frame.f_globals.get("__name__", "")
    return name + "." if isinstance(name, str) else ""


def _body_of(error: openai.APIError | anthropic.APIError) -> dict[str, Any]:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]  # Anthropic: {"type": "error", "error": {...}}
    return body if isinstance(body, dict) else {}


def _reason_of(body: dict[str, Any]) -> str:
    message = body.get("message")
    return message if isinstance(message, str) else ""


def _shorten(reason: str) -> str:
    reason = " ".join(reason.split())
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    # Cut between words: half a word quoted from the prompt (a pasted key)
    # would no longer match the prompt's words, and would escape redaction.
    # With no space to cut at, nothing of it is kept (the caller gets this
    # service's own text instead).
    cut = reason.rfind(" ", 0, MAX_REASON_CHARS)
    return reason[:cut] + "…" if cut > 0 else ""
