"""The llm service's domain types: providers, requests, answers, failures."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

ProviderKind = Literal["openai", "anthropic", "openai_compatible"]
Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "content_filter", "unspecified"]


class ErrorClass(enum.Enum):
    """How an attempt failed; names match the contract's `ErrorClass` values."""

    RATE_LIMITED = "RATE_LIMITED"
    SERVER_ERROR = "SERVER_ERROR"
    CONNECTION = "CONNECTION"
    TIMEOUT = "TIMEOUT"
    STREAM_STALLED = "STREAM_STALLED"
    MALFORMED_RESPONSE = "MALFORMED_RESPONSE"
    CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED"
    CONTENT_POLICY = "CONTENT_POLICY"
    AUTHENTICATION = "AUTHENTICATION"
    BAD_REQUEST = "BAD_REQUEST"
    CREDENTIALS_UNAVAILABLE = "CREDENTIALS_UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"

    @property
    def counts_against_provider(self) -> bool:
        """Whether the failure says the provider is unwell (versus the request,
        or this service's own access to the provider's key)."""
        return self not in _REQUEST_FAULTS and self not in _NOT_THE_PROVIDERS


_REQUEST_FAULTS = {
    ErrorClass.CONTEXT_LENGTH_EXCEEDED,
    ErrorClass.CONTENT_POLICY,
    ErrorClass.BAD_REQUEST,
    ErrorClass.DEADLINE_EXCEEDED,
}
# No key to send (none configured, or the vault unreachable): the provider was
# never asked, so a vault outage must not show healthy providers as open.
_NOT_THE_PROVIDERS = {ErrorClass.CREDENTIALS_UNAVAILABLE}


@dataclass(frozen=True)
class ProviderConfig:
    """One model at one endpoint serving one route, as stored in the registry."""

    provider_id: str
    kind: ProviderKind
    endpoint: str
    model: str
    route: str
    priority: int = 0
    weight: int = 1
    api_key_id: str = ""
    context_window: int = 0
    request_timeout_seconds: float = 60.0
    first_token_timeout_seconds: float = 10.0
    stream_idle_timeout_seconds: float = 10.0
    input_price_per_million: float = 0.0
    output_price_per_million: float = 0.0
    disabled: bool = False
    create_time_ms: int = 0
    update_time_ms: int = 0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.input_price_per_million
            + output_tokens * self.output_price_per_million
        ) / 1_000_000


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class CompletionRequest:
    """A validated request, in the contract's one message format."""

    route: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    cacheable: bool = False
    skip_cache: bool = False

    @property
    def deterministic(self) -> bool:
        """Whether an earlier answer may stand in for a fresh one."""
        return self.cacheable or self.temperature == 0.0

    @property
    def prompt_chars(self) -> int:
        return sum(len(m.content) for m in self.messages)


@dataclass
class Completion:
    """What one provider answered."""

    text: str
    finish_reason: FinishReason
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class TextDelta:
    """A piece of a streamed answer."""

    text: str


@dataclass(frozen=True)
class StreamEnd:
    """The end of a streamed answer, with what the provider reported about it."""

    finish_reason: FinishReason
    input_tokens: int = 0
    output_tokens: int = 0


class ProviderFailure(Exception):
    """A classified failure of one attempt. `message` is safe to show a caller
    except when `provider_text` says it quotes the provider: then only once
    the prompt is cut out of it (see `redaction.py`)."""

    def __init__(
        self,
        error_class: ErrorClass,
        message: str,
        *,
        http_status: int = 0,
        retry_after: float | None = None,
        provider_text: bool = False,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after
        self.provider_text = provider_text

    @property
    def refusal(self) -> bool:
        """Whether the provider answered and refused this request over HTTP:
        proof that it is up, though the attempt failed."""
        return 400 <= self.http_status < 500


@dataclass(frozen=True)
class FailedAttempt:
    """One attempt that failed, as the response reports it."""

    provider_id: str
    model: str
    error_class: ErrorClass
    message: str
    latency_seconds: float
    http_status: int = 0


@dataclass
class Outcome:
    """The answer of a request, with every attempt that failed before it."""

    request_id: str
    provider: ProviderConfig
    completion: Completion
    failed_attempts: list[FailedAttempt] = field(default_factory=list)
    cached: bool = False
    latency_seconds: float = 0.0

    @property
    def cost_usd(self) -> float:
        if self.cached:
            return 0.0
        return self.provider.cost(
            self.completion.input_tokens, self.completion.output_tokens
        )
