"""The llm service beside LiteLLM: latency each adds over a direct SDK call.

One fake OpenAI provider runs in its own process. Our side (a direct
`AsyncOpenAI` call, and the service's `Complete` / `StreamComplete`) is
measured in this process; LiteLLM's side (a direct call, its Router, its proxy
where it installed) in a process of `bench/.venv-peers`, by
`bench/peers/litellm_peer.py`. Each "added" figure is taken against the direct
baseline of its own process, one call at a time and with calls in flight.

One call at a time, our added latency comes from paired calls: a direct call
and one through the service back to back, the figures being percentiles of
the per-pair differences, so both calls of a pair saw the same moment's load.
With calls in flight, pairing would compare a direct call with a service
call queued behind other callers' service calls, which is not what LiteLLM's
side measures; there both sides are measured alike, in alternating slices,
and the added figure is a difference of percentiles, marked unpaired.
LiteLLM's figures are always unpaired (`litellm_peer.py` does not pair them).
A difference below zero is noise, printed as such, never as a latency.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from openai import AsyncOpenAI

import bench.loadgen
from bench.llm_calls import (
    KINDS,
    MODEL,
    REPO,
    direct_calls,
    fake_provider,
    running_llm,
    service_calls,
)
from bench.loadgen import Call, Result, alternate, summarize
from bench.peers.env import PeerEnv
from bench.peers.litellm_proxy import running_proxy
from bench.peers.rows import unavailable
from bench.report import Report

CONCURRENCY = 16
PEER_SCRIPT = Path(__file__).with_name("litellm_peer.py")
PEER_TIMEOUT_S = 300.0
MODES = {"serial": "serial", "loaded": f"x{CONCURRENCY}"}  # one at a time, or in flight

Pair = tuple[Result, Result]  # (direct SDK baseline, through the router)


@dataclass(frozen=True)
class Added:
    """Latency a router adds over the direct call, at p50 and p99 (ms)."""

    p50_ms: float
    p99_ms: float
    paired: bool

    @classmethod
    def unpaired(cls, pair: Pair) -> Added:
        direct, through = pair
        return cls(
            through.p50_ms - direct.p50_ms, through.p99_ms - direct.p99_ms, False
        )


@dataclass(frozen=True)
class Paired:
    """Direct calls and calls through the service, made in pairs."""

    direct: Result
    through: Result
    added: Added
    pairs: int


Ours = dict[str, Paired]  # "<kind>_<mode>" -> figures
Theirs = dict[str, Pair]  # "<side>_<kind>_<mode>" -> (direct, through)


async def run(report: Report, peers: PeerEnv) -> None:
    with fake_provider() as base_url:
        ours = await _ours(base_url)
        theirs, why = await asyncio.to_thread(_theirs, peers, base_url)
    for mode, label in MODES.items():
        for kind in KINDS:
            _rows(report, ours, theirs, why, f"{kind}_{mode}", f"{kind}, {label}")


def _rows(
    report: Report,
    ours: Ours,
    theirs: Theirs | None,
    why: dict[str, str],
    key: str,
    label: str,
) -> None:
    figure = ours[key]
    report.row(f"llm direct SDK, {label}", figure.direct)
    pairs = f", {figure.pairs} pairs" if figure.added.paired else ""
    report.line(
        f"llm service added, {label}",
        f"{_added_text(figure.added)} over direct SDK"
        f" (p50 {figure.direct.p50_ms:.3f} ms){pairs}",
    )
    for side, peer in (("router", "LiteLLM Router"), ("proxy", "LiteLLM proxy")):
        pair = None if theirs is None else theirs.get(f"{side}_{key}")
        if pair is None:
            unavailable(f"{peer} added, {label}", why.get(side, "not measured"))
            continue
        added = Added.unpaired(pair)
        report.line(
            f"{peer} added, {label}",
            f"{_added_text(added)} over its direct SDK (p50 {pair[0].p50_ms:.3f} ms)",
        )
        report.line(
            f"llm/{peer} added, {label}",
            f"p50 {_share(figure.added.p50_ms, added.p50_ms)},"
            f" p99 {_share(figure.added.p99_ms, added.p99_ms)} of {peer}'s",
        )
        report.row(
            f"llm service vs {peer}, {label}",
            figure.through,
            pair[1],
            baseline_name=peer,
        )


def _added_text(added: Added) -> str:
    how = "paired" if added.paired else "unpaired"
    return f"added p50 {_ms(added.p50_ms)}, p99 {_ms(added.p99_ms)} ({how})"


def _ms(value: float) -> str:
    # A router adds time; less than none means the noise is larger than it.
    return f"{value:.3f} ms" if value >= 0 else "below noise"


def _share(ours: float, theirs: float) -> str:
    if ours < 0 or theirs <= 0:
        return "n/a"
    return f"{ours / theirs:.0%}"


async def paired(direct: Call, through: Call, *, concurrency: int) -> Paired:
    """`concurrency` callers, each making a direct call and a call through the
    service back to back (which goes first alternates), for as long as
    `bench.loadgen.alternate` gives a figure and its baseline together.

    Each Result's `seconds` is the time its calls took per caller, so its rps
    estimates what that many callers would reach at those latencies (the real
    rate of each side is about half, the callers taking turns).
    """
    scale = bench.loadgen.SCALE
    await _pairs(direct, through, concurrency, bench.loadgen.WARMUP_S * scale)
    duration = 2 * bench.loadgen.SLICES * bench.loadgen.SLICE_S * scale
    pairs, errors = await _pairs(direct, through, concurrency, duration)

    directs = [d for d, _ in pairs]
    throughs = [t for _, t in pairs]
    differences = sorted(t - d for d, t in pairs)
    return Paired(
        direct=summarize(directs, errors[0], sum(directs) / concurrency),
        through=summarize(throughs, errors[1], sum(throughs) / concurrency),
        added=Added(
            _percentile_ms(differences, 0.50), _percentile_ms(differences, 0.99), True
        ),
        pairs=len(pairs),
    )


async def _pairs(
    direct: Call, through: Call, concurrency: int, duration_s: float
) -> tuple[list[tuple[float, float]], list[int]]:
    """(direct, through) seconds of every pair without an error, and the
    errors of each side."""
    pairs: list[tuple[float, float]] = []
    errors = [0, 0]
    end = time.perf_counter() + duration_s

    async def caller(through_first: bool) -> None:
        while time.perf_counter() < end:
            order = (1, 0) if through_first else (0, 1)
            through_first = not through_first
            seconds = [0.0, 0.0]
            failed = False
            for side in order:
                begin = time.perf_counter()
                try:
                    await (direct, through)[side]()
                except Exception:  # noqa: BLE001 - counted, the run goes on
                    errors[side] += 1
                    failed = True
                    continue
                seconds[side] = time.perf_counter() - begin
            if not failed:
                pairs.append((seconds[0], seconds[1]))

    await asyncio.gather(*(caller(index % 2 == 1) for index in range(concurrency)))
    return pairs, errors


async def _alternated(direct: Call, through: Call, concurrency: int) -> Paired:
    """Both sides in alternating slices, as LiteLLM's side is measured."""
    results = await alternate(
        {"direct": direct, "through": through}, concurrency=concurrency
    )
    pair = (results["direct"], results["through"])
    return Paired(pair[0], pair[1], Added.unpaired(pair), pairs=0)


def _percentile_ms(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


async def _ours(base_url: str) -> Ours:
    direct = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    figures: Ours = {}
    with tempfile.TemporaryDirectory() as directory:
        async with running_llm(base_url, f"sqlite:///{directory}/llm.db") as llm:
            baseline = direct_calls(direct)
            through = service_calls(llm.client)
            # The same order as litellm_peer.py uses on its side.
            for mode, in_flight in (("serial", 1), ("loaded", CONCURRENCY)):
                for index, kind in enumerate(KINDS):
                    if in_flight == 1:
                        figure = await paired(
                            baseline[index], through[index], concurrency=1
                        )
                    else:
                        figure = await _alternated(
                            baseline[index], through[index], in_flight
                        )
                    figures[f"{kind}_{mode}"] = figure
    await direct.close()
    return figures


def _theirs(peers: PeerEnv, base_url: str) -> tuple[Theirs | None, dict[str, str]]:
    """LiteLLM's figures from the peer venv, or why each side is missing."""
    if not peers.has("litellm"):
        reason = peers.missing.get("litellm", "not installed")
        return None, {"router": reason, "proxy": reason}
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),  # for bench.loadgen, the shared slicing
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from the internet
        "LITELLM_LOG": "ERROR",
        # The proxy refuses to start open; the peer script presents this key.
        "LITELLM_MASTER_KEY": "sk-" + secrets.token_hex(24),
    }
    why: dict[str, str] = {}
    with running_proxy(peers.litellm_proxy, base_url, MODEL, env) as (
        proxy_url,
        proxy_why,
    ):
        if proxy_why:
            why["proxy"] = proxy_why
        command = [str(peers.python), str(PEER_SCRIPT), base_url, MODEL]
        command += [str(CONCURRENCY), proxy_url]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=PEER_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            reason = f"the LiteLLM run took over {PEER_TIMEOUT_S:.0f}s"
            return None, {"router": reason, "proxy": why.get("proxy", reason)}
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-1:]
        reason = f"the LiteLLM run failed: {(tail or ['no output'])[0][:200]}"
        return None, {"router": reason, "proxy": why.get("proxy", reason)}
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    figures = {
        name: (Result(**pair[0]), Result(**pair[1])) for name, pair in raw.items()
    }
    return figures, why
