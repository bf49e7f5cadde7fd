"""Adapters that speak to providers through the official SDKs.

Each adapter translates the contract's one message format to its provider's
(system prompts, roles, stop sequences, max tokens, temperature), calls the
SDK with its own retries off, and turns answers into `Completion`s or streams
of `TextDelta` ending in one `StreamEnd`. A stream that ends without its
provider's finish signal raises a MALFORMED_RESPONSE failure: a truncated
answer never passes for a complete one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx2
import openai

from services.llm.failures import classify
from services.llm.models import (
    ChatMessage,
    Completion,
    CompletionRequest,
    ErrorClass,
    FinishReason,
    ProviderConfig,
    ProviderFailure,
    StreamEnd,
    TextDelta,
)

StreamEvent = TextDelta | StreamEnd

# After the finish signal, how long to wait for trailing usage and the end
# sentinel before calling the answer complete anyway.
END_GRACE_SECONDS = 1.0
NO_KEY = "none"  # local endpoints take no key, but the SDKs insist on one
# More tokens than any one answer has; a larger count is garbage, and would
# overflow the usage columns and the contract's int64.
MAX_TOKEN_COUNT = 10**12

_OPENAI_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "stop",
    "function_call": "stop",
}
_ANTHROPIC_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
    "pause_turn": "stop",
    "tool_use": "stop",
}


class ProviderClient:
    """Base of the adapters: one SDK client bound to one provider and key."""

    def __init__(self, provider: ProviderConfig) -> None:
        self.provider = provider
        # Within the idle timeout, so the router never calls a finished stream stalled.
        self._end_grace = min(
            END_GRACE_SECONDS, provider.stream_idle_timeout_seconds / 2
        )

    async def complete(self, request: CompletionRequest) -> Completion:
        raise NotImplementedError

    def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamEvent, None]:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def _next_event(self, iterator: AsyncIterator[Any], finished: bool) -> Any:
        """The stream's next event, or None at its end.

        After the finish signal only trailing usage may follow, so the wait is
        bounded by the end grace instead of the stream's idle timeout.
        """
        try:
            if not finished:
                return await iterator.__anext__()
            return await asyncio.wait_for(iterator.__anext__(), self._end_grace)
        except (StopAsyncIteration, TimeoutError):
            return None
        except Exception as error:
            if finished and classify(error).error_class is ErrorClass.CONNECTION:
                # The answer is whole: the connection went with only the end
                # sentinel or the trailing usage, as when they never come.
                return None
            raise


def create_client(provider: ProviderConfig, api_key: str | None) -> ProviderClient:
    """The adapter for the provider's wire format."""
    if provider.kind == "anthropic":
        return AnthropicClient(provider, api_key)
    return OpenAIClient(provider, api_key)


def _unfinished_stream() -> ProviderFailure:
    return ProviderFailure(
        ErrorClass.MALFORMED_RESPONSE, "the stream ended before the answer finished"
    )


@contextlib.contextmanager
def _reading_answer() -> Iterator[None]:
    """Reads what the provider sent; a wrong shape is a malformed response.

    The SDKs build their response models without validating them, so a
    missing object or a value of the wrong type only fails when it is read.
    Only reads of provider data go inside, never a yield.
    """
    try:
        yield
    except (AttributeError, TypeError, IndexError, KeyError):
        raise ProviderFailure(
            ErrorClass.MALFORMED_RESPONSE,
            "the provider sent an answer of the wrong shape",
        ) from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError("answer text is not a string")
    return value


def _tokens(value: Any) -> int:
    """A token count; none given is 0, never garbage to bill or store."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("a token count is not an integer")
    if not 0 <= value <= MAX_TOKEN_COUNT:
        raise TypeError("a token count is out of range")
    return value


def _openai_usage(usage: Any) -> tuple[int, int] | None:
    if usage is None:
        return None
    return _tokens(usage.prompt_tokens), _tokens(usage.completion_tokens)


def _sdk_options(provider: ProviderConfig, api_key: str | None) -> dict[str, Any]:
    """What both SDKs take; their own retries stay off because the router retries."""
    return {
        "api_key": api_key or NO_KEY,
        "base_url": provider.endpoint,
        "max_retries": 0,
        "timeout": _http_timeout(provider),
    }


def _http_timeout(provider: ProviderConfig) -> httpx2.Timeout:
    # A backstop only: the router enforces the attempt's real deadlines.
    longest = max(
        provider.request_timeout_seconds,
        provider.first_token_timeout_seconds,
        provider.stream_idle_timeout_seconds,
    )
    return httpx2.Timeout(longest + 1.0, connect=min(10.0, longest + 1.0))


class OpenAIClient(ProviderClient):
    """OpenAI chat completions, and every server that speaks them."""

    def __init__(self, provider: ProviderConfig, api_key: str | None) -> None:
        super().__init__(provider)
        self._sdk = openai.AsyncOpenAI(**_sdk_options(provider, api_key))

    def _arguments(self, request: CompletionRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.provider.model,
            "messages": [
                {"role": m.role, "content": m.content} for m in request.messages
            ],
        }
        # OpenAI's own API wants the newer name; compatible servers know the old.
        if self.provider.kind == "openai":
            arguments["max_completion_tokens"] = request.max_tokens
        else:
            arguments["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        if request.stop:
            arguments["stop"] = list(request.stop)
        return arguments

    async def complete(self, request: CompletionRequest) -> Completion:
        response = await self._sdk.chat.completions.create(**self._arguments(request))
        with _reading_answer():
            if not response.choices:
                raise ProviderFailure(
                    ErrorClass.MALFORMED_RESPONSE, "the provider sent no choices"
                )
            choice = response.choices[0]
            text = _text(choice.message.content)
            finish = _OPENAI_FINISH.get(choice.finish_reason or "", "unspecified")
            input_tokens, output_tokens = _openai_usage(response.usage) or (0, 0)
        return Completion(text, finish, input_tokens, output_tokens)

    async def stream(
        self, request: CompletionRequest
    ) -> AsyncGenerator[StreamEvent, None]:
        stream = await self._sdk.chat.completions.create(
            **self._arguments(request),
            stream=True,
            stream_options={"include_usage": True},
        )
        finish: FinishReason | None = None
        usage: tuple[int, int] | None = None
        chunks = 0
        iterator = stream.__aiter__()
        try:
            while (
                chunk := await self._next_event(iterator, finish is not None)
            ) is not None:
                text, reason, chunk_usage = _read_chunk(chunk)
                if chunk_usage is not None:
                    usage = chunk_usage
                if text:
                    chunks += 1
                    yield TextDelta(text)
                if reason is not None:
                    finish = reason
        finally:
            await stream.close()

        if finish is None:
            raise _unfinished_stream()
        yield StreamEnd(
            finish,
            input_tokens=usage[0] if usage else 0,
            output_tokens=usage[1] if usage else chunks,
        )

    async def aclose(self) -> None:
        await self._sdk.close()


def _read_chunk(chunk: Any) -> tuple[str, FinishReason | None, tuple[int, int] | None]:
    """The text, finish reason and usage of one OpenAI stream chunk."""
    with _reading_answer():
        usage = _openai_usage(chunk.usage)
        if not chunk.choices:
            return "", None, usage
        choice = chunk.choices[0]
        text = _text(choice.delta.content) if choice.delta is not None else ""
        reason = choice.finish_reason
        finish = None if reason is None else _OPENAI_FINISH.get(reason, "unspecified")
        return text, finish, usage


class AnthropicClient(ProviderClient):
    """Anthropic messages."""

    def __init__(self, provider: ProviderConfig, api_key: str | None) -> None:
        super().__init__(provider)
        self._sdk = anthropic.AsyncAnthropic(**_sdk_options(provider, api_key))

    def _arguments(self, request: CompletionRequest) -> dict[str, Any]:
        system = [m.content for m in request.messages if m.role == "system"]
        arguments: dict[str, Any] = {
            "model": self.provider.model,
            "max_tokens": request.max_tokens,
            "messages": _alternating_turns(request.messages),
        }
        if system:
            arguments["system"] = "\n\n".join(system)
        if request.temperature is not None:
            # Anthropic's scale ends at 1; the contract's (OpenAI's) at 2. The
            # SDK (since 1.0) has no `temperature` argument, though the API
            # still takes it on models that sample, so it goes in the body.
            arguments["extra_body"] = {"temperature": min(request.temperature, 1.0)}
        if request.stop:
            arguments["stop_sequences"] = list(request.stop)
        return arguments

    async def complete(self, request: CompletionRequest) -> Completion:
        message = await self._sdk.messages.create(**self._arguments(request))
        with _reading_answer():
            text = "".join(
                _text(block.text)
                for block in message.content
                if getattr(block, "type", "") == "text"
            )
            finish = _ANTHROPIC_FINISH.get(message.stop_reason or "", "unspecified")
            usage = message.usage
            input_tokens = _tokens(usage.input_tokens) if usage else 0
            output_tokens = _tokens(usage.output_tokens) if usage else 0
        return Completion(text, finish, input_tokens, output_tokens)

    async def stream(
        self, request: CompletionRequest
    ) -> AsyncGenerator[StreamEvent, None]:
        stream = await self._sdk.messages.create(
            **self._arguments(request), stream=True
        )
        finish: FinishReason | None = None
        input_tokens = output_tokens = 0
        iterator = stream.__aiter__()
        try:
            while (
                event := await self._next_event(iterator, finish is not None)
            ) is not None:
                with _reading_answer():
                    kind = event.type
                    text = ""
                    if kind == "message_start":
                        input_tokens = _tokens(event.message.usage.input_tokens)
                    elif kind == "content_block_delta":
                        text = _text(getattr(event.delta, "text", None))
                    elif kind == "message_delta":
                        output_tokens = _tokens(event.usage.output_tokens)
                        reason = event.delta.stop_reason or ""
                        finish = _ANTHROPIC_FINISH.get(reason, "unspecified")
                if text:
                    yield TextDelta(text)
                elif kind == "message_stop":
                    break
        finally:
            await stream.close()

        if finish is None:
            raise _unfinished_stream()
        yield StreamEnd(finish, input_tokens=input_tokens, output_tokens=output_tokens)

    async def aclose(self) -> None:
        await self._sdk.close()


def _alternating_turns(messages: tuple[ChatMessage, ...]) -> list[dict[str, str]]:
    """User and assistant turns, consecutive turns of one role merged."""
    turns: list[dict[str, str]] = []
    for message in messages:
        if message.role == "system":
            continue
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"] += "\n\n" + message.content
        else:
            turns.append({"role": message.role, "content": message.content})
    return turns
