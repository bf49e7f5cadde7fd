"""Every exception the provider SDKs raise maps to a failure class, in one place."""

from __future__ import annotations

import inspect
import json

import anthropic
import httpx2
import openai
import pytest

from services.llm.failures import classify, classify_status, retry_after_seconds
from services.llm.models import ErrorClass, ProviderFailure

REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def sdk_exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for module in (openai, anthropic):
        for _, value in inspect.getmembers(module, inspect.isclass):
            # Only the SDKs' own error trees (not webhook helpers) can come
            # out of a completion call.
            if issubclass(value, openai.OpenAIError | anthropic.AnthropicError):
                found.append(value)
    return found


def build(kind: type[BaseException]) -> BaseException:
    """An instance of an SDK exception class, whatever its constructor wants."""
    if issubclass(kind, openai.APIStatusError | anthropic.APIStatusError):
        status = getattr(kind, "status_code", 500)
        status = status if isinstance(status, int) else 500
        response = httpx2.Response(status, request=REQUEST, json={"error": {}})
        try:
            return kind("boom", response=response, body={})
        except TypeError:  # OAuthError takes no message
            return kind(response=response, body={})
    if issubclass(kind, openai.APITimeoutError | anthropic.APITimeoutError):
        return kind(request=REQUEST)
    if issubclass(kind, openai.APIConnectionError | anthropic.APIConnectionError):
        return kind(request=REQUEST)
    if issubclass(
        kind, openai.APIResponseValidationError | anthropic.APIResponseValidationError
    ):
        response = httpx2.Response(200, request=REQUEST)
        return kind(response=response, body=None)
    if issubclass(kind, openai.APIError | anthropic.APIError):
        return kind("boom", REQUEST, body=None)
    instance = kind.__new__(kind)
    BaseException.__init__(instance, "boom")
    return instance


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, id=f"{k.__module__}.{k.__name__}")
        for k in sdk_exception_classes()
    ],
)
def test_every_sdk_exception_is_classified(kind: type[BaseException]) -> None:
    failure = classify(build(kind))
    assert isinstance(failure, ProviderFailure)
    assert isinstance(failure.error_class, ErrorClass)
    assert "boom" not in failure.message or failure.error_class in (
        ErrorClass.BAD_REQUEST,
        ErrorClass.CONTENT_POLICY,
        ErrorClass.CONTEXT_LENGTH_EXCEEDED,
    )


@pytest.mark.parametrize(
    "error, expected",
    [
        (httpx2.ReadError("reset"), ErrorClass.CONNECTION),
        (httpx2.RemoteProtocolError("incomplete chunked read"), ErrorClass.CONNECTION),
        (httpx2.ReadTimeout("slow"), ErrorClass.TIMEOUT),
        (json.JSONDecodeError("bad", "{x", 1), ErrorClass.MALFORMED_RESPONSE),
    ],
)
def test_transport_and_decoding_errors_are_classified(
    error: Exception, expected: ErrorClass
) -> None:
    assert classify(error).error_class is expected


def test_a_bug_in_this_service_is_not_taken_for_a_provider_failure() -> None:
    with pytest.raises(KeyError):
        classify(KeyError("ours"))


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (429, {}, ErrorClass.RATE_LIMITED),
        (
            401,
            {"message": "Incorrect API key provided: sk-abc"},
            ErrorClass.AUTHENTICATION,
        ),
        (500, {}, ErrorClass.SERVER_ERROR),
        (529, {"type": "overloaded_error"}, ErrorClass.SERVER_ERROR),
        (
            400,
            {"code": "context_length_exceeded", "message": "too long"},
            ErrorClass.CONTEXT_LENGTH_EXCEEDED,
        ),
        (
            400,
            {"message": "prompt is too long: 210000 tokens > 200000 maximum"},
            ErrorClass.CONTEXT_LENGTH_EXCEEDED,
        ),
        (
            400,
            {"code": "content_policy_violation", "message": "rejected"},
            ErrorClass.CONTENT_POLICY,
        ),
        (
            400,
            {"message": "Output blocked by content filtering policy"},
            ErrorClass.CONTENT_POLICY,
        ),
        (400, {"message": "assistant prefill not supported"}, ErrorClass.BAD_REQUEST),
        (404, {"message": "model not found"}, ErrorClass.BAD_REQUEST),
    ],
)
def test_status_classification(status: int, body: dict, expected: ErrorClass) -> None:
    assert classify_status(status, body).error_class is expected


def test_authentication_message_never_repeats_the_providers_text() -> None:
    failure = classify_status(401, {"message": "Incorrect API key provided: sk-abc123"})
    assert "sk-abc" not in failure.message


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    response = httpx2.Response(429, request=REQUEST, headers=headers)
    assert retry_after_seconds(response) == expected
