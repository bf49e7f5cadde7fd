"""Fixtures for the llm service's tests: a running service and fake providers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.harness.fake_providers import FakeProvider
from tests.harness.tokens import LocalIssuer
from tests.llm.harness import RunningLlm, start_llm


@pytest.fixture
async def llm(issuer: LocalIssuer, sqlite_url: str) -> AsyncIterator[RunningLlm]:
    async for running in start_llm(issuer, sqlite_url):
        yield running


@pytest.fixture
async def openai_primary() -> AsyncIterator[FakeProvider]:
    async with FakeProvider("openai", model="primary-model") as fake:
        yield fake


@pytest.fixture
async def openai_fallback() -> AsyncIterator[FakeProvider]:
    async with FakeProvider("openai", model="fallback-model") as fake:
        yield fake


@pytest.fixture
async def anthropic_fallback() -> AsyncIterator[FakeProvider]:
    async with FakeProvider("anthropic", model="claude-fake") as fake:
        yield fake
