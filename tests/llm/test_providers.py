"""The contract's one message format as each provider received it: the exact
bodies the real SDKs sent to the fake providers (system prompts, roles, stop
sequences, max tokens, temperature)."""

from __future__ import annotations

from typing import Any

import pytest

from empire.llm.v1 import llm_service_pb2 as pb
from tests.harness.fake_providers import FakeProvider
from tests.llm.harness import RunningLlm

SYSTEM, USER, ASSISTANT = pb.ROLE_SYSTEM, pb.ROLE_USER, pb.ROLE_ASSISTANT
DEFAULT_MAX_TOKENS = 1024  # the policy's, when the request leaves it 0

CONVERSATION = [
    (SYSTEM, "Be terse."),
    (USER, "Name a colour."),
    (USER, "Only one."),
    (ASSISTANT, "Red."),
    (SYSTEM, "Answer in English."),
    (USER, "Another."),
]
SAMPLING = {"max_tokens": 64, "temperature": 0.5, "stop": ["END", "\n\n"]}
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])


def messages(turns: list[tuple[int, str]]) -> list[pb.Message]:
    return [pb.Message(role=role, content=content) for role, content in turns]


async def body_sent(
    llm: RunningLlm, fake: FakeProvider, kind: int, *, stream: bool, **fields: Any
) -> dict[str, Any]:
    """The one request body `fake` received for a Complete or StreamComplete."""
    await llm.client.put("p", fake, kind=kind)
    if stream:
        result = await llm.client.stream(**fields)
        assert result.error is None and result.done is not None
    else:
        await llm.client.call("Complete", pb.CompleteRequest(route="chat", **fields))
    (received,) = fake.requests
    return received.body


def openai_streaming(stream: bool) -> dict[str, Any]:
    return {"stream": True, "stream_options": {"include_usage": True}} if stream else {}


@STREAM
@pytest.mark.parametrize(
    "kind, max_tokens_name",
    [
        pytest.param(pb.PROVIDER_KIND_OPENAI, "max_completion_tokens", id="openai"),
        pytest.param(pb.PROVIDER_KIND_OPENAI_COMPATIBLE, "max_tokens", id="compatible"),
    ],
)
async def test_openai_gets_every_message_in_order_with_its_own_role(
    llm: RunningLlm, stream: bool, kind: int, max_tokens_name: str
) -> None:
    async with FakeProvider("openai", model="gpt-x") as fake:
        body = await body_sent(
            llm,
            fake,
            kind,
            stream=stream,
            messages=messages(CONVERSATION),
            **SAMPLING,
        )

    assert body == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Name a colour."},
            {"role": "user", "content": "Only one."},
            {"role": "assistant", "content": "Red."},
            {"role": "system", "content": "Answer in English."},
            {"role": "user", "content": "Another."},
        ],
        # OpenAI's own API takes the newer name; compatible servers the old.
        max_tokens_name: 64,
        "temperature": 0.5,
        "stop": ["END", "\n\n"],
        **openai_streaming(stream),
    }


@STREAM
async def test_openai_gets_no_sampling_field_the_caller_left_unset(
    llm: RunningLlm, stream: bool
) -> None:
    async with FakeProvider("openai", model="gpt-x") as fake:
        body = await body_sent(
            llm,
            fake,
            pb.PROVIDER_KIND_OPENAI,
            stream=stream,
            messages=messages([(USER, "hi")]),
        )

    assert body == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": DEFAULT_MAX_TOKENS,
        **openai_streaming(stream),
    }


@STREAM
async def test_anthropic_gets_a_top_level_system_and_alternating_turns(
    llm: RunningLlm, stream: bool
) -> None:
    async with FakeProvider("anthropic", model="claude-x") as fake:
        body = await body_sent(
            llm,
            fake,
            pb.PROVIDER_KIND_ANTHROPIC,
            stream=stream,
            messages=messages(CONVERSATION),
            **SAMPLING,
        )

    assert body == {
        "model": "claude-x",
        "max_tokens": 64,
        # Every system message, wherever it was, joined into the one field.
        "system": "Be terse.\n\nAnswer in English.",
        # Consecutive turns of one role merged, so roles alternate.
        "messages": [
            {"role": "user", "content": "Name a colour.\n\nOnly one."},
            {"role": "assistant", "content": "Red."},
            {"role": "user", "content": "Another."},
        ],
        "temperature": 0.5,
        "stop_sequences": ["END", "\n\n"],
        **({"stream": True} if stream else {}),
    }


async def test_anthropic_temperature_is_clamped_to_its_scale(llm: RunningLlm) -> None:
    async with FakeProvider("anthropic", model="claude-x") as fake:
        body = await body_sent(
            llm,
            fake,
            pb.PROVIDER_KIND_ANTHROPIC,
            stream=False,
            messages=messages([(USER, "hi")]),
            temperature=1.5,
        )

    assert body["temperature"] == 1.0


@STREAM
async def test_anthropic_gets_no_optional_field_the_caller_left_unset(
    llm: RunningLlm, stream: bool
) -> None:
    async with FakeProvider("anthropic", model="claude-x") as fake:
        body = await body_sent(
            llm,
            fake,
            pb.PROVIDER_KIND_ANTHROPIC,
            stream=stream,
            messages=messages([(USER, "hi"), (ASSISTANT, "Hel")]),
        )

    # An assistant turn last is the caller's prefill, sent as it is.
    assert body == {
        "model": "claude-x",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hel"},
        ],
        **({"stream": True} if stream else {}),
    }
