"""The llm benches' shared parts: a fake OpenAI provider in its own process, the
service configured to use it, and the same completion asked of either.

The fake runs in its own process so neither side under test pays for its CPU.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from openai import AsyncOpenAI

from bench.processes import stop
from bench.sdk_calls import Calls, sdk_calls
from empire.llm.v1 import llm_service_pb2 as pb
from empire.llm.v1 import llm_service_pb2_grpc as pb_grpc
from tests.harness.tokens import LocalIssuer
from tests.llm.harness import LlmClient, RunningLlm, seconds, start_llm

MODEL = "fake-model"
KINDS = ("plain", "streamed")
REPO = Path(__file__).resolve().parents[1]

Metadata = tuple[tuple[str, str], ...]


@contextlib.contextmanager
def fake_provider() -> Iterator[str]:
    """The fake OpenAI provider in its own process; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.fake_providers", "openai"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().decode().strip()
        if not base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError("the fake provider did not start")
        yield base_url
    finally:
        if process.stdin is not None:
            process.stdin.close()  # the fake serves until its stdin closes
        stop(process, grace=5.0)
        if process.stdout is not None:
            process.stdout.close()


@contextlib.asynccontextmanager
async def running_llm(base_url: str, database_url: str) -> AsyncIterator[RunningLlm]:
    """Our llm service in this event loop, with the fake on route "chat"."""
    async for llm in start_llm(LocalIssuer(), database_url):
        await use_fake(llm.client, base_url)
        yield llm


async def use_fake(client: LlmClient, base_url: str) -> None:
    """Route "chat" to the fake, with timeouts a loaded machine cannot trip."""
    await client.put(
        "fake",
        None,
        route="chat",
        kind=pb.PROVIDER_KIND_OPENAI,
        endpoint=base_url,
        model=MODEL,
        request_timeout=seconds(30),
        first_token_timeout=seconds(30),
        stream_idle_timeout=seconds(30),
    )


def direct_calls(client: AsyncOpenAI) -> Calls:
    """The completion asked of the provider with the `openai` SDK: the baseline."""
    return sdk_calls(client, MODEL)


def service_calls(client: LlmClient) -> Calls:
    """The same completion through the service's Complete and StreamComplete."""
    stub: pb_grpc.LlmServiceStub = client.stub
    metadata: Metadata = client.metadata()
    message = pb.Message(role=pb.ROLE_USER, content="hello")
    plain_request = pb.CompleteRequest(route="chat", messages=[message])
    stream_request = pb.StreamCompleteRequest(route="chat", messages=[message])

    async def plain() -> None:
        await stub.Complete(plain_request, metadata=metadata)

    async def streamed() -> None:
        async for _ in stub.StreamComplete(stream_request, metadata=metadata):
            pass

    return plain, streamed
