"""The one place where provider SDK exceptions become classified failures.

Every exception the `openai` and `anthropic` SDKs (and the HTTP layer under
them) raise is mapped here to an `ErrorClass`, which decides whether the
router retries, waits, fails over or gives up. Messages are built here too, so
that no key or prompt text leaks: only the provider's own reason for 4xx
rejections is kept, shortened.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from typing import Any

import anthropic
import httpx2
import openai
import pydantic

from services.llm.models import ErrorClass, ProviderFailure

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
    if isinstance(error, openai.OpenAIError | anthropic.AnthropicError):
        # An SDK error of no known kind (an error event inside a stream, say):
        # the provider misbehaved, so it is failed over like a bad response.
        return ProviderFailure(
            ErrorClass.MALFORMED_RESPONSE, "the provider reported an error"
        )
    raise error


def classify_status(
    status: int, body: dict[str, Any], response: httpx2.Response | None = None
) -> ProviderFailure:
    """The failure for an HTTP error status with its decoded error body."""
    reason = _reason_of(body)
    code = str(body.get("code") or "")
    if status == 429:
        return ProviderFailure(
            ErrorClass.RATE_LIMITED,
            "the provider is rate limiting",
            http_status=status,
            retry_after=retry_after_seconds(response),
        )
    if status in (401, 402, 403):
        # The provider's text may quote part of the key: never pass it on.
        return ProviderFailure(
            ErrorClass.AUTHENTICATION,
            "the provider rejected the API key or account",
            http_status=status,
        )
    if status in (408, 409) or status >= 500:
        return ProviderFailure(
            ErrorClass.SERVER_ERROR,
            f"the provider answered HTTP {status}",
            http_status=status,
        )
    if code in _CONTEXT_CODES or status == 413 or _CONTEXT_PATTERNS.search(reason):
        return ProviderFailure(
            ErrorClass.CONTEXT_LENGTH_EXCEEDED,
            _shorten(reason) or "the prompt exceeds the model's context window",
            http_status=status,
        )
    if code in _POLICY_CODES or _POLICY_PATTERNS.search(reason):
        return ProviderFailure(
            ErrorClass.CONTENT_POLICY,
            _shorten(reason) or "the provider refused the content",
            http_status=status,
        )
    return ProviderFailure(
        ErrorClass.BAD_REQUEST,
        _shorten(reason) or f"the provider answered HTTP {status}",
        http_status=status,
    )


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


def _body_of(error: openai.APIStatusError | anthropic.APIStatusError) -> dict[str, Any]:
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
    return reason[: MAX_REASON_CHARS - 1] + "…"
