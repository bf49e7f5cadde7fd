"""LLM: the service's added latency over a direct `openai` SDK call to the same
fake provider, plain and streamed, beside LiteLLM doing the same calls: its
Router in process and, where it installs, its proxy server.

The fake provider runs in its own process, so its work is not billed to either
side. Calls are timed in pairs (direct, then through the router under test),
one at a time, so both see the same machine at the same moment; "added" is the
difference of their percentiles. LiteLLM runs from `bench/.venv-peers` (never
a runtime dependency); without it, its rows are skipped with a note.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from openai import AsyncOpenAI

from bench.loadgen import SCALE, Result, measure, summarize
from bench.report import Report
from empire.llm.v1 import llm_service_pb2 as pb
from tests.harness.tokens import LocalIssuer
from tests.llm.harness import LlmClient, RunningLlm, start_llm

PAIRED_CALLS = 400
WARMUP_CALLS = 30
PEER_PYTHON = Path(__file__).parent / ".venv-peers" / "bin" / "python"
PEER_LITELLM = Path(__file__).parent / ".venv-peers" / "bin" / "litellm"
MESSAGES = [{"role": "user", "content": "hello"}]
MAX_TOKENS = 64  # every side sends the same `max_tokens`
# The proxy refuses to start without one; it checks it on every call, as the
# service checks its JWT.
PROXY_MASTER_KEY = "sk-bench-" + "0" * 32

Call = Callable[[], Awaitable[object]]


async def run(report: Report) -> None:
    with _fake_provider() as base_url:
        direct = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
        ours: dict[str, dict[str, tuple[Result, Result]]] = {}
        with tempfile.TemporaryDirectory() as directory:
            async with _service(base_url, f"sqlite:///{directory}/llm.db") as llm:
                ours["in process"] = await _our_rows(
                    report, direct, llm.client, "in process", load=True
                )
            async with _service_process(
                base_url, f"sqlite:///{directory}/llm-process.db"
            ) as client:
                ours["own process"] = await _our_rows(
                    report, direct, client, "own process", load=False
                )
        await direct.close()
        peers = await asyncio.to_thread(_litellm_results, base_url)
    for shape, results in ours.items():
        _peer_rows(report, results, peers, shape)


async def _our_rows(
    report: Report, direct: AsyncOpenAI, client: LlmClient, shape: str, *, load: bool
) -> dict[str, tuple[Result, Result]]:
    metadata = client.metadata()
    message = pb.Message(role=pb.ROLE_USER, content="hello")
    plain_request = pb.CompleteRequest(
        route="chat", messages=[message], max_tokens=MAX_TOKENS
    )
    stream_request = pb.StreamCompleteRequest(
        route="chat", messages=[message], max_tokens=MAX_TOKENS
    )

    async def service_plain() -> None:
        await client.stub.Complete(plain_request, metadata=metadata)

    async def service_stream() -> None:
        async for _ in client.stub.StreamComplete(stream_request, metadata=metadata):
            pass

    results: dict[str, tuple[Result, Result]] = {}
    for kind, direct_call, service_call in (
        ("plain", _direct_plain(direct), service_plain),
        ("streamed", _direct_stream(direct), service_stream),
    ):
        baseline, through = await paired(direct_call, service_call)
        results[kind] = (baseline, through)
        rpc = "Complete" if kind == "plain" else "StreamComplete"
        report.row(f"llm direct openai SDK, {kind}", baseline)
        report.row(
            f"llm {rpc} via service ({shape})",
            through,
            baseline,
            baseline_name="direct openai SDK",
        )
        report.latency_row(
            f"llm service ({shape}) added latency, {kind}",
            through,
            baseline,
            baseline_name="direct openai SDK",
        )
    if not load:
        return results

    direct_load = await measure(_direct_plain(direct), concurrency=16)
    service_load = await measure(service_plain, concurrency=16)
    report.row("llm direct openai SDK, plain, 16 in flight", direct_load)
    report.row(
        "llm Complete via service, 16 in flight",
        service_load,
        direct_load,
        baseline_name="direct openai SDK",
    )
    return results


def _peer_rows(
    report: Report,
    ours: dict[str, tuple[Result, Result]],
    peers: dict[str, Any],
    shape: str,
) -> None:
    if "error" in peers:
        print(f"-- llm: LiteLLM rows skipped: {peers['error']}", flush=True)
        return
    for side, label in (
        ("router", "LiteLLM Router (in process)"),
        ("proxy", "LiteLLM proxy"),
    ):
        for kind in ("plain", "streamed"):
            pair = peers.get(f"{side}_{kind}")
            if pair is None:
                note = peers.get(f"{side}_note", "not measured")
                print(f"-- llm: {label}, {kind}: {note}", flush=True)
                continue
            baseline, through = (_result(pair["direct"]), _result(pair["through"]))
            if shape == "in process":
                report.row(
                    f"llm {label}, {kind}",
                    through,
                    baseline,
                    baseline_name="direct openai SDK (peer venv)",
                )
                report.latency_row(
                    f"llm {label} added latency, {kind}",
                    through,
                    baseline,
                    baseline_name="direct openai SDK (peer venv)",
                )
            our_base, our_through = ours[kind]
            ours_added = our_through.p50_ms - our_base.p50_ms
            theirs_added = through.p50_ms - baseline.p50_ms
            ours_p99 = our_through.p99_ms - our_base.p99_ms
            theirs_p99 = through.p99_ms - baseline.p99_ms
            print(
                f"{f'llm service ({shape}) added / {label}, {kind}':<52}"
                f" p50 {_ratio(ours_added, theirs_added)}, p99"
                f" {_ratio(ours_p99, theirs_p99)} (aim: under 25% of the Router's)",
                flush=True,
            )


def _ratio(ours: float, theirs: float) -> str:
    if theirs <= 0:
        return f"{ours:.3f} ms vs {theirs:.3f} ms"
    return f"{ours / theirs:6.0%} ({ours:.3f} ms vs {theirs:.3f} ms)"


def _result(data: dict[str, float]) -> Result:
    return Result(
        calls=int(data["calls"]),
        errors=int(data.get("errors", 0)),
        seconds=data["seconds"],
        p50_ms=data["p50_ms"],
        p99_ms=data["p99_ms"],
    )


async def paired(first: Call, second: Call) -> tuple[Result, Result]:
    """Time `first` and `second` alternately, one call at a time."""
    count = max(20, int(PAIRED_CALLS * SCALE))
    for _ in range(WARMUP_CALLS):
        await first()
        await second()
    times: tuple[list[float], list[float]] = ([], [])
    totals = [0.0, 0.0]
    for _ in range(count):
        for index, call in enumerate((first, second)):
            begin = time.perf_counter()
            await call()
            elapsed = time.perf_counter() - begin
            times[index].append(elapsed)
            totals[index] += elapsed
    return summarize(times[0], 0, totals[0]), summarize(times[1], 0, totals[1])


def _direct_plain(client: AsyncOpenAI) -> Call:
    async def call() -> None:
        await client.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
        )

    return call


def _direct_stream(client: AsyncOpenAI) -> Call:
    async def call() -> None:
        stream = await client.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            pass

    return call


@contextlib.contextmanager
def _fake_provider() -> Iterator[str]:
    """A fake OpenAI provider in its own process; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.fake_providers", "openai"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url:
            raise RuntimeError("the fake provider did not start")
        yield base_url
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def _service(base_url: str, database_url: str) -> AsyncIterator[RunningLlm]:
    """The service in this process and event loop, as the other benches run."""
    async for llm in start_llm(LocalIssuer(), database_url):
        await _put_fake(llm.client, base_url)
        yield llm


@contextlib.asynccontextmanager
async def _service_process(
    base_url: str, database_url: str
) -> AsyncIterator[LlmClient]:
    """`python -m services.llm` in its own process, as it is deployed, verifying
    tokens against a JWKS this process serves."""
    issuer = LocalIssuer()

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(issuer.jwks())

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    jwks_port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", jwks_port).start()
    port = _free_port()
    env = {
        **os.environ,
        "EMPIRE_LLM_PORT": str(port),
        "EMPIRE_LLM_HTTP_PORT": str(_free_port()),
        "EMPIRE_LLM_DATABASE_URL": database_url,
        "EMPIRE_LLM_HEALTH_CHECK_INTERVAL_SECONDS": "0",
        "EMPIRE_JWKS_URL": f"http://127.0.0.1:{jwks_port}/jwks",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.llm"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not await asyncio.to_thread(_wait_for_port, port, process, 60.0):
            raise RuntimeError("python -m services.llm did not start")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = LlmClient(channel, issuer)
            await _put_fake(client, base_url)
            yield client
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
        await runner.cleanup()


async def _put_fake(client: LlmClient, base_url: str) -> None:
    await client.put(
        "fake",
        None,
        route="chat",
        kind=pb.PROVIDER_KIND_OPENAI_COMPATIBLE,
        endpoint=base_url,
        model="fake-model",
    )


def _litellm_results(base_url: str) -> dict[str, Any]:
    """Run the peer measurements in the peer venv; their JSON, or an error."""
    if not PEER_PYTHON.exists():
        return {"error": f"{PEER_PYTHON} missing (pip install litellm there)"}
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": ""}
    with _litellm_proxy(base_url, env) as (proxy_url, proxy_note):
        arguments = [str(PEER_PYTHON), "-c", PEER_SCRIPT, base_url]
        arguments += [str(max(20, int(PAIRED_CALLS * SCALE))), str(WARMUP_CALLS)]
        arguments += [proxy_url or "", PROXY_MASTER_KEY]
        completed = subprocess.run(
            arguments, capture_output=True, text=True, env=env, timeout=600
        )
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"peer run failed: {tail[0][:200]}"}
    results: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    if proxy_note:
        results["proxy_note"] = proxy_note
    return results


@contextlib.contextmanager
def _litellm_proxy(base_url: str, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """LiteLLM's proxy server in front of the fake, when its extras installed."""
    if not PEER_LITELLM.exists():
        yield "", "the litellm CLI is not installed"
        return
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "config.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: chat\n"
            "    litellm_params:\n"
            "      model: openai/fake-model\n"
            f"      api_base: {base_url}\n"
            "      api_key: bench\n"
            "litellm_settings:\n"
            "  num_retries: 0\n"
            "general_settings:\n"
            f"  master_key: {PROXY_MASTER_KEY}\n"
        )
        port = _free_port()
        process = subprocess.Popen(
            [str(PEER_LITELLM), "--config", str(config), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=directory,
        )
        try:
            if _wait_for_port(port, process, 90.0):
                yield f"http://127.0.0.1:{port}/v1", ""
            else:
                yield "", "the proxy did not start (its extras may be missing)"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[Any], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.25)
    return False


# Runs inside bench/.venv-peers: LiteLLM's Router and proxy, each timed in pairs
# with a direct openai call from the same interpreter; prints one JSON line.
PEER_SCRIPT = r"""
import asyncio, json, sys, time
import litellm
from litellm import Router
from openai import AsyncOpenAI

base_url, count, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
proxy_url, proxy_key = sys.argv[4], sys.argv[5]
MESSAGES = [{"role": "user", "content": "hello"}]
litellm.suppress_debug_info = True


def summary(samples, total):
    ordered = sorted(samples)

    def pick(fraction):
        rank = max(0, int(fraction * len(ordered) + 0.999999) - 1)
        return ordered[min(len(ordered) - 1, rank)] * 1000

    return {
        "calls": len(ordered), "seconds": total,
        "p50_ms": pick(0.5), "p99_ms": pick(0.99),
    }


async def paired(first, second):
    for _ in range(warmup):
        await first()
        await second()
    times, totals = ([], []), [0.0, 0.0]
    for _ in range(count):
        for index, call in enumerate((first, second)):
            begin = time.perf_counter()
            await call()
            elapsed = time.perf_counter() - begin
            times[index].append(elapsed)
            totals[index] += elapsed
    return {
        "direct": summary(times[0], totals[0]),
        "through": summary(times[1], totals[1]),
    }


def plain(client, model):
    async def call():
        await client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=64
        )
    return call


def streamed(client, model):
    async def call():
        stream = await client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=64, stream=True
        )
        async for _ in stream:
            pass
    return call


async def main():
    direct = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    router = Router(
        model_list=[{"model_name": "chat", "litellm_params": {
            "model": "openai/fake-model", "api_base": base_url, "api_key": "bench"}}],
        num_retries=0,
    )

    async def router_plain():
        await router.acompletion(model="chat", messages=MESSAGES, max_tokens=64)

    async def router_stream():
        response = await router.acompletion(
            model="chat", messages=MESSAGES, max_tokens=64, stream=True
        )
        async for _ in response:
            pass

    direct_plain = plain(direct, "fake-model")
    direct_stream = streamed(direct, "fake-model")
    results = {
        "router_plain": await paired(direct_plain, router_plain),
        "router_streamed": await paired(direct_stream, router_stream),
    }
    if proxy_url:
        proxy = AsyncOpenAI(base_url=proxy_url, api_key=proxy_key, max_retries=0)
        results["proxy_plain"] = await paired(direct_plain, plain(proxy, "chat"))
        results["proxy_streamed"] = await paired(direct_stream, streamed(proxy, "chat"))
    print(json.dumps(results))


asyncio.run(main())
"""
