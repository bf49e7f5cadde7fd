"""Every exception the provider SDKs raise maps to a failure class, in one place."""

from __future__ import annotations

import inspect
import json
from typing import Any

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


async def sdk_error(flavor: str, base_url: str) -> BaseException:
    """What the real SDK raises, building its client included, when asked for a
    completion at `base_url`."""
    client: Any = None
    try:
        if flavor == "openai":
            client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        else:
            client = anthropic.AsyncAnthropic(
                base_url=base_url, api_key="k", max_retries=0
            )
            await client.messages.create(
                model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
            )
    except Exception as error:  # noqa: BLE001 - the error is the result
        return error
    finally:
        if client is not None:
            await client.close()
    raise AssertionError(f"{base_url} answered")


@pytest.mark.parametrize("flavor", ["openai", "anthropic"])
@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param("http://127.0.0.1:99999/v1", id="port-out-of-range"),
        pytest.param("http://[::1/v1", id="unparsable"),
        pytest.param("htp://127.0.0.1/v1", id="unsupported-protocol"),
    ],
)
async def test_an_endpoint_the_http_client_cannot_use_is_a_connection_failure(
    flavor: str, base_url: str
) -> None:
    # Stored before validation refused such URLs: the route must fail over,
    # not answer INTERNAL.
    error = await sdk_error(flavor, base_url)

    failure = classify(error)

    assert failure.error_class is ErrorClass.CONNECTION
    assert failure.error_class.counts_against_provider


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(httpx2.InvalidURL("Invalid port: ':1'"), id="invalid-url"),
        pytest.param(httpx2.UnsupportedProtocol("htp"), id="unsupported-protocol"),
        pytest.param(httpx2.TooManyRedirects("loop", request=REQUEST), id="redirects"),
    ],
)
def test_http_client_errors_the_sdks_leave_unwrapped_are_failed_over(
    error: Exception,
) -> None:
    assert classify(error).error_class is ErrorClass.CONNECTION


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            {"type": "overloaded_error", "message": "Overloaded"},
            ErrorClass.SERVER_ERROR,
        ),
        ({"type": "api_error", "message": "Internal"}, ErrorClass.SERVER_ERROR),
        ({"type": "rate_limit_error", "message": "slow down"}, ErrorClass.RATE_LIMITED),
        ({"type": "authentication_error", "message": "k"}, ErrorClass.AUTHENTICATION),
        ({"type": "invalid_request_error", "message": "no"}, ErrorClass.BAD_REQUEST),
        ({"type": "something_new", "message": "?"}, ErrorClass.SERVER_ERROR),
        ({}, ErrorClass.SERVER_ERROR),
    ],
)
def test_an_error_event_inside_a_200_stream_is_classified_by_its_type(
    body: dict, expected: ErrorClass
) -> None:
    failure = classify_status(200, body)

    assert failure.error_class is expected
    assert failure.http_status == 200
    if expected is ErrorClass.SERVER_ERROR:
        assert failure.message.startswith("the provider sent an error event")


VLLM_CONTEXT_LENGTH = (
    "This model's maximum context length is 4096 tokens. However, you requested"
    " 5000 tokens (4000 in the messages, 1000 in the completion)."
)


@pytest.mark.parametrize(
    "body, expected",
    [
        pytest.param(
            {
                "object": "error",
                "type": "BadRequestError",
                "message": VLLM_CONTEXT_LENGTH,
                "param": None,
                "code": 400,
            },
            ErrorClass.CONTEXT_LENGTH_EXCEEDED,
            id="vllm-context-length",
        ),
        pytest.param(
            {"type": "BadRequestError", "message": "unknown field", "code": 400},
            ErrorClass.BAD_REQUEST,
            id="vllm-bad-request",
        ),
        pytest.param(
            {"type": "NotFoundError", "message": "no such model", "code": "404"},
            ErrorClass.BAD_REQUEST,
            id="vllm-code-as-text",
        ),
        pytest.param(
            {"type": "TooManyRequests", "message": "busy", "code": 429},
            ErrorClass.RATE_LIMITED,
            id="vllm-rate-limit",
        ),
        pytest.param(
            {"type": "InternalServerError", "message": "oops", "code": 500},
            ErrorClass.SERVER_ERROR,
            id="vllm-server-error",
        ),
        pytest.param(
            {"type": None, "code": "context_length_exceeded", "message": "too long"},
            ErrorClass.CONTEXT_LENGTH_EXCEEDED,
            id="openai-context-code",
        ),
        pytest.param(
            {"message": "content_policy violation"},
            ErrorClass.CONTENT_POLICY,
            id="openai-policy-message",
        ),
        pytest.param(
            {"type": "", "code": "content_filter", "message": "filtered"},
            ErrorClass.CONTENT_POLICY,
            id="openai-filter-code",
        ),
        pytest.param(
            {"type": "something_new", "message": "?", "code": 200},
            ErrorClass.SERVER_ERROR,
            id="code-outside-the-error-range",
        ),
        pytest.param(
            {"type": "something_new", "message": "?", "code": True},
            ErrorClass.SERVER_ERROR,
            id="code-not-a-number",
        ),
    ],
)
def test_an_error_event_of_an_unknown_type_is_classified_by_its_code_and_message(
    body: dict, expected: ErrorClass
) -> None:
    assert classify_status(200, body).error_class is expected


def test_an_http_5xx_naming_the_context_window_stays_a_server_error() -> None:
    # Only an error event lacks a status of its own; a real 5xx is the status.
    body = {"type": "BadRequestError", "message": VLLM_CONTEXT_LENGTH, "code": 400}
    assert classify_status(503, body).error_class is ErrorClass.SERVER_ERROR


def test_an_openai_error_event_from_the_sdk_names_the_context_window() -> None:
    body = {"type": "BadRequestError", "message": VLLM_CONTEXT_LENGTH, "code": 400}
    error = openai.APIError(VLLM_CONTEXT_LENGTH, REQUEST, body=body)

    failure = classify(error)

    assert failure.error_class is ErrorClass.CONTEXT_LENGTH_EXCEEDED
    assert "maximum context length" in failure.message


def test_an_anthropic_error_event_from_the_sdk_is_a_server_error() -> None:
    response = httpx2.Response(200, request=REQUEST)
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
    error = anthropic.AsyncAnthropic(api_key="k")._make_status_error(
        str(body), body=body, response=response
    )

    failure = classify(error)

    assert failure.error_class is ErrorClass.SERVER_ERROR
    assert "overloaded_error" in failure.message


def test_only_a_reason_taken_from_the_provider_is_flagged_for_redaction() -> None:
    refused = classify_status(400, {"message": "bad input: violet heron"})
    event = classify_status(
        200, {"type": "invalid_request_error", "message": "bad: violet heron"}
    )
    own = classify_status(503, {"message": "violet heron"})

    assert refused.provider_text and event.provider_text
    assert not own.provider_text and "heron" not in own.message
