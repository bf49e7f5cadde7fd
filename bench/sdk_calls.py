"""A chat completion asked with the `openai` SDK, plain and streamed.

Both sides of the LiteLLM comparison use it: our process for the direct
baseline, and `bench/.venv-peers` (so it imports nothing but `openai`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from openai import AsyncOpenAI

MESSAGES = [{"role": "user", "content": "hello"}]

Call = Callable[[], Awaitable[object]]
Calls = tuple[Call, Call]  # (plain, streamed)


def sdk_calls(client: AsyncOpenAI, model: str) -> Calls:
    """`model` asked through `client`: the provider itself, or a proxy."""

    async def plain() -> None:
        await client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]

    async def streamed() -> None:
        stream = await client.chat.completions.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
        async for _ in stream:  # type: ignore[union-attr]
            pass

    return plain, streamed
