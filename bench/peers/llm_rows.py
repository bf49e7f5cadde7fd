"""The llm service beside LiteLLM: latency each adds over a direct SDK call.

One fake OpenAI provider runs in its own process. Our side (a direct
`AsyncOpenAI` call, and the service's `Complete` / `StreamComplete`) is
measured in this process; LiteLLM's side (a direct call, its Router, its proxy
where it installed) in a process of `bench/.venv-peers`, by
`bench/peers/litellm_peer.py`. Each "added" figure is taken against the direct
baseline of its own process, one call at a time and with calls in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import tempfile
from pathlib import Path

from openai import AsyncOpenAI

from bench.llm_calls import (
    KINDS,
    MODEL,
    REPO,
    direct_calls,
    fake_provider,
    running_llm,
    service_calls,
)
from bench.loadgen import Result, alternate
from bench.peers.env import PeerEnv
from bench.peers.litellm_proxy import running_proxy
from bench.peers.rows import added_ratio, unavailable
from bench.report import Report

CONCURRENCY = 16
PEER_SCRIPT = Path(__file__).with_name("litellm_peer.py")
PEER_TIMEOUT_S = 300.0
MODES = {"serial": "serial", "loaded": f"x{CONCURRENCY}"}  # one at a time, or in flight

Pair = tuple[Result, Result]  # (direct SDK baseline, through the router)
Figures = dict[str, Pair]  # "<kind>_<mode>" or "<side>_<kind>_<mode>" -> pair


async def run(report: Report, peers: PeerEnv) -> None:
    with fake_provider() as base_url:
        ours = await _ours(base_url)
        theirs, why = await asyncio.to_thread(_theirs, peers, base_url)
    for mode, label in MODES.items():
        for kind in KINDS:
            _rows(report, ours, theirs, why, f"{kind}_{mode}", f"{kind}, {label}")


def _rows(
    report: Report,
    ours: Figures,
    theirs: Figures | None,
    why: dict[str, str],
    key: str,
    label: str,
) -> None:
    direct, service = ours[key]
    report.row(f"llm direct SDK, {label}", direct)
    report.latency_row(
        f"llm service added, {label}", service, direct, baseline_name="direct SDK"
    )
    for side, peer in (("router", "LiteLLM Router"), ("proxy", "LiteLLM proxy")):
        pair = None if theirs is None else theirs.get(f"{side}_{key}")
        if pair is None:
            unavailable(f"{peer} added, {label}", why.get(side, "not measured"))
            continue
        report.latency_row(
            f"{peer} added, {label}", pair[1], pair[0], baseline_name="its direct SDK"
        )
        added_ratio(f"llm/{peer} added, {label}", (direct, service), pair, peer)
        report.row(
            f"llm service vs {peer}, {label}", service, pair[1], baseline_name=peer
        )


async def _ours(base_url: str) -> Figures:
    direct = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    figures: Figures = {}
    with tempfile.TemporaryDirectory() as directory:
        async with running_llm(base_url, f"sqlite:///{directory}/llm.db") as llm:
            baseline = direct_calls(direct)
            through = service_calls(llm.client)
            # The same order and slices as litellm_peer.py uses on its side.
            for mode, in_flight in (("serial", 1), ("loaded", CONCURRENCY)):
                for index, kind in enumerate(KINDS):
                    results = await alternate(
                        {"direct": baseline[index], "through": through[index]},
                        concurrency=in_flight,
                    )
                    figures[f"{kind}_{mode}"] = (
                        results["direct"],
                        results["through"],
                    )
    await direct.close()
    return figures


def _theirs(peers: PeerEnv, base_url: str) -> tuple[Figures | None, dict[str, str]]:
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
