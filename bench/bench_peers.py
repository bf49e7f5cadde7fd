"""Peers side by side: our vault beside OpenBao (in memory and on PostgreSQL),
our llm service beside LiteLLM's Router and proxy (against one fake provider).

The peers live in `bench/.venv-peers`, installed on first use (see
`bench/peers/env.py`); a peer that cannot be had prints "peer unavailable".
"""

from __future__ import annotations

import asyncio

from bench.peers import llm_rows, vault_rows
from bench.peers.env import ensure_peers
from bench.report import Report


async def run(report: Report) -> None:
    peers = await asyncio.to_thread(ensure_peers)
    await vault_rows.run(report, peers)
    await llm_rows.run(report, peers)
