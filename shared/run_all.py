"""`make run`: the four services on their embedded defaults; Ctrl-C stops them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from shared.config import Env, ServerSettings, load_server_settings

SERVICES = ("auth", "vault", "cache", "llm")
STOP_TIMEOUT_SECONDS = 15.0
AUTH_START_SECONDS = 15.0


def main() -> int:
    Path("var").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    settings = {name: load_server_settings(name, Env()) for name in SERVICES}
    children: dict[str, subprocess.Popen[bytes]] = {}
    # Before the first child starts: a Ctrl-C or SIGTERM while auth is still
    # starting must stop what has started, not leave it running on its ports.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _start_children(children, settings, env)
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
        failed = [name for name, child in children.items() if child.poll() is not None]
        print(f"stopping: {', '.join(failed)} exited", file=sys.stderr)
        return_code = 1
    except KeyboardInterrupt:
        return_code = 0
    _stop(children)
    return return_code


def _start_children(
    children: dict[str, subprocess.Popen[bytes]],
    settings: dict[str, ServerSettings],
    env: dict[str, str],
) -> None:
    """Starts the services in order into `children`, then says where they are."""
    for name in SERVICES:
        children[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=env
        )
        if name == "auth":
            # The others fetch auth's keys and revocations as they start.
            _wait_for_auth(settings["auth"].jwks_url, children["auth"])

    print("\nEmpire Security is starting (Ctrl-C stops it):", flush=True)
    for name, each in settings.items():
        print(
            f"  {name:<6} gRPC {each.host}:{each.port}"
            f"   metrics http://{each.host}:{each.http_port}/metrics",
            flush=True,
        )
    auth = settings["auth"]
    print(f"  JWKS   http://{auth.host}:{auth.http_port}/.well-known/jwks.json\n")


def _wait_for_auth(jwks_url: str, auth: subprocess.Popen[bytes]) -> None:
    """Until auth publishes its keys, it exits, or AUTH_START_SECONDS pass."""
    deadline = time.monotonic() + AUTH_START_SECONDS
    while time.monotonic() < deadline and auth.poll() is None:
        try:
            with urllib.request.urlopen(jwks_url, timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _stop(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for name, child in children.items():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in time; killing it", file=sys.stderr)
            child.kill()


if __name__ == "__main__":
    raise SystemExit(main())
