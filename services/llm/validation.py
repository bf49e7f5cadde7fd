"""Checks of every request field; a bad one is INVALID_ARGUMENT naming it."""

from __future__ import annotations

import math
import re
import unicodedata
from urllib.parse import urlsplit

import httpx2
from google.protobuf import timestamp_pb2

from empire.llm.v1 import llm_service_pb2 as pb
from services.llm.models import ChatMessage, CompletionRequest, ProviderConfig
from services.llm.settings import RouterPolicy
from shared import pagination
from shared.errors import InvalidArgument

ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9/._-]{0,254}")
MAX_MODEL_CHARS = 200
MAX_ENDPOINT_CHARS = 2048
MAX_PRIORITY = 1000
MAX_WEIGHT = 1000
MAX_TIMEOUT_SECONDS = 3600.0
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 200
MAX_MESSAGES = 10_000
MAX_TOKENS_LIMIT = 1_000_000
# The range of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31 (UTC).
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799

DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_FIRST_TOKEN_TIMEOUT = 10.0
DEFAULT_STREAM_IDLE_TIMEOUT = 10.0

_KINDS = {
    pb.PROVIDER_KIND_OPENAI: "openai",
    pb.PROVIDER_KIND_ANTHROPIC: "anthropic",
    pb.PROVIDER_KIND_OPENAI_COMPATIBLE: "openai_compatible",
}
_ROLES = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
}


def check_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    # The whole value: `re.match` with `$` would let a trailing newline through.
    if not ID_PATTERN.fullmatch(value):
        raise InvalidArgument(
            field,
            "must be 1 to 63 lower-case letters, digits, '.', '_' or '-',"
            " starting with a letter or digit",
        )
    return value


def provider_from_proto(message: pb.Provider) -> ProviderConfig:
    """A validated provider config from PutProvider's `provider` field."""
    check_id("provider.provider_id", message.provider_id)
    check_id("provider.route", message.route)
    kind = _KINDS.get(message.kind)
    if kind is None:
        raise InvalidArgument(
            "provider.kind", "must be OPENAI, ANTHROPIC or OPENAI_COMPATIBLE"
        )
    _check_endpoint(message.endpoint)
    if not message.model or len(message.model) > MAX_MODEL_CHARS:
        raise InvalidArgument(
            "provider.model", f"is required, at most {MAX_MODEL_CHARS} characters"
        )
    _check_printable("provider.model", message.model)
    if not 0 <= message.priority <= MAX_PRIORITY:
        raise InvalidArgument("provider.priority", f"must be 0 to {MAX_PRIORITY}")
    weight = _weight(message)
    if message.api_key_id and not KEY_ID_PATTERN.fullmatch(message.api_key_id):
        raise InvalidArgument("provider.api_key_id", "is not a valid vault key id")
    if message.context_window < 0:
        raise InvalidArgument("provider.context_window", "must not be negative")
    prices = (
        ("provider.input_price_per_million", message.input_price_per_million),
        ("provider.output_price_per_million", message.output_price_per_million),
    )
    for field, price in prices:
        if not math.isfinite(price) or price < 0:
            raise InvalidArgument(field, "must be a finite, non-negative number")

    return ProviderConfig(
        provider_id=message.provider_id,
        kind=kind,  # type: ignore[arg-type]
        endpoint=message.endpoint.rstrip("/"),
        model=message.model,
        route=message.route,
        priority=message.priority,
        weight=weight,
        api_key_id=message.api_key_id,
        context_window=message.context_window,
        request_timeout_seconds=_timeout(
            message, "request_timeout", DEFAULT_REQUEST_TIMEOUT
        ),
        first_token_timeout_seconds=_timeout(
            message, "first_token_timeout", DEFAULT_FIRST_TOKEN_TIMEOUT
        ),
        stream_idle_timeout_seconds=_timeout(
            message, "stream_idle_timeout", DEFAULT_STREAM_IDLE_TIMEOUT
        ),
        input_price_per_million=message.input_price_per_million,
        output_price_per_million=message.output_price_per_million,
        disabled=message.disabled,
    )


def _weight(message: pb.Provider) -> int:
    """The weight, 1 when unset; an explicit 0 is refused rather than read as 1
    or as "drained" (as in Envoy, a weight is at least 1: drain a provider by
    disabling it, deleting it or giving it a later priority)."""
    if not message.HasField("weight"):
        return 1
    if not 1 <= message.weight <= MAX_WEIGHT:
        raise InvalidArgument(
            "provider.weight",
            f"must be 1 to {MAX_WEIGHT} (unset means 1); to drain a provider,"
            " set `disabled` or a later `priority`",
        )
    return message.weight


def _check_endpoint(endpoint: str) -> None:
    # No message here quotes the endpoint: it may carry a pasted key.
    field = "provider.endpoint"
    if not endpoint or len(endpoint) > MAX_ENDPOINT_CHARS:
        raise InvalidArgument(field, "is required, an http or https URL")
    if any(c.isspace() or _is_control(c) for c in endpoint):
        raise InvalidArgument(field, "must not contain spaces or control characters")
    try:
        parts = urlsplit(endpoint)
        port = parts.port  # raises on a port out of range or not a number
        httpx2.URL(endpoint)  # what the SDKs will parse it with
    except (ValueError, httpx2.InvalidURL):
        raise InvalidArgument(field, "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(field, "must be an http or https URL with a host")
    if port is not None and not 1 <= port <= 65535:
        raise InvalidArgument(field, "must have a port from 1 to 65535")
    if parts.username or parts.password or parts.query or parts.fragment:
        # A key pasted into the URL would end up in logs and listings.
        raise InvalidArgument(
            field, "must not carry credentials, a query or a fragment"
        )


def _check_printable(field: str, value: str) -> None:
    # A NUL would fail the PostgreSQL write; other controls corrupt listings.
    if any(_is_control(c) for c in value):
        raise InvalidArgument(field, "must not contain control characters")


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc"


def _timeout(message: pb.Provider, name: str, default: float) -> float:
    if not message.HasField(name):
        return default
    duration = getattr(message, name)
    seconds = duration.seconds + duration.nanos / 1e9
    if seconds < 0 or seconds > MAX_TIMEOUT_SECONDS:
        raise InvalidArgument(
            f"provider.{name}", f"must be between 0 and {MAX_TIMEOUT_SECONDS:g}s"
        )
    return seconds or default


def completion_from_proto(
    message: pb.CompleteRequest | pb.StreamCompleteRequest, policy: RouterPolicy
) -> CompletionRequest:
    """A validated completion request; the route's existence is checked later."""
    check_id("route", message.route)
    if not message.messages:
        raise InvalidArgument("messages", "must hold at least one message")
    if len(message.messages) > MAX_MESSAGES:
        raise InvalidArgument("messages", f"must hold at most {MAX_MESSAGES} messages")
    messages = tuple(_message(i, m) for i, m in enumerate(message.messages))
    if all(m.role == "system" for m in messages):
        raise InvalidArgument("messages", "must hold a user or assistant message")
    prompt_chars = sum(len(m.content) for m in messages)
    if prompt_chars > policy.max_prompt_chars:
        raise InvalidArgument(
            "messages",
            f"the prompt exceeds {policy.max_prompt_chars} characters",
            reason="PROMPT_TOO_LARGE",
        )
    if message.max_tokens < 0 or message.max_tokens > MAX_TOKENS_LIMIT:
        raise InvalidArgument("max_tokens", f"must be 0 to {MAX_TOKENS_LIMIT}")
    temperature = message.temperature if message.HasField("temperature") else None
    if temperature is not None and not (0.0 <= temperature <= 2.0):
        raise InvalidArgument("temperature", "must be between 0 and 2")
    if len(message.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(
            "stop", f"must hold at most {MAX_STOP_SEQUENCES} sequences"
        )
    for i, stop in enumerate(message.stop):
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidArgument(
                f"stop[{i}]", f"must be 1 to {MAX_STOP_CHARS} characters"
            )

    return CompletionRequest(
        route=message.route,
        messages=messages,
        max_tokens=message.max_tokens or policy.default_max_tokens,
        temperature=temperature,
        stop=tuple(message.stop),
        cacheable=getattr(message, "cacheable", False),
        skip_cache=getattr(message, "skip_cache", False),
    )


def _message(index: int, message: pb.Message) -> ChatMessage:
    role = _ROLES.get(message.role)
    if role is None:
        raise InvalidArgument(
            f"messages[{index}].role", "must be SYSTEM, USER or ASSISTANT"
        )
    if not message.content.strip():
        raise InvalidArgument(f"messages[{index}].content", "must not be empty")
    return ChatMessage(role, message.content)  # type: ignore[arg-type]


def timestamp_ms(field: str, stamp: timestamp_pb2.Timestamp) -> int:
    """Epoch milliseconds of a valid Timestamp (0001-01-01 to 9999-12-31)."""
    if not MIN_TIMESTAMP_SECONDS <= stamp.seconds <= MAX_TIMESTAMP_SECONDS:
        raise InvalidArgument(field, "must be between 0001-01-01 and 9999-12-31")
    if not 0 <= stamp.nanos <= 999_999_999:
        raise InvalidArgument(field, "must have nanos from 0 to 999,999,999")
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


def page_size(value: int) -> int:
    return pagination.page_size(value, default=50, maximum=500)
