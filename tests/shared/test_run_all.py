"""`make run` as a user meets it: four services up, answering grpcurl, then Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys

import pytest

from tests.harness.grpcurl import grpcurl

SERVICES = ("auth", "vault", "cache", "llm")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _wait_until_serving(target: str) -> dict[str, str]:
    last_error = ""
    for _ in range(150):
        code, out, err = await grpcurl(
            "-plaintext", target, "grpc.health.v1.Health/Check"
        )
        if code == 0 and "SERVING" in out:
            return {"status": "SERVING"}
        last_error = err
        await asyncio.sleep(0.2)
    raise AssertionError(f"{target} never served: {last_error}")


async def test_make_run_starts_four_services_and_stops_them_cleanly(tmp_path) -> None:
    ports = {name: (_free_port(), _free_port()) for name in SERVICES}
    env = {**os.environ, "EMPIRE_SHUTDOWN_GRACE_SECONDS": "1"}
    for name, (grpc_port, http_port) in ports.items():
        env[f"EMPIRE_{name.upper()}_PORT"] = str(grpc_port)
        env[f"EMPIRE_{name.upper()}_HTTP_PORT"] = str(http_port)
    env["EMPIRE_JWKS_URL"] = (
        f"http://127.0.0.1:{ports['auth'][1]}/.well-known/jwks.json"
    )
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = repo
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.run_all",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for name, (grpc_port, _) in ports.items():
            target = f"127.0.0.1:{grpc_port}"
            await _wait_until_serving(target)
            code, listing, _ = await grpcurl("-plaintext", target, "list")
            assert code == 0
            assert f"empire.{name}.v1." in listing
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=30)

    assert process.returncode == 0, output.decode()[-2000:]
    text = output.decode()
    for name, (grpc_port, _) in ports.items():
        assert f"{name:<6} gRPC 127.0.0.1:{grpc_port}" in text
        assert f'"message": "{name} stopped"' in text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
async def test_signal_while_auth_starts_stops_auth_too(tmp_path, signum) -> None:
    """`make run` waits for auth's key set before starting the rest; stopping
    it then must stop auth, not leave it running on its ports."""
    env = {**os.environ, "EMPIRE_SHUTDOWN_GRACE_SECONDS": "1"}
    for name in SERVICES:
        env[f"EMPIRE_{name.upper()}_PORT"] = str(_free_port())
        env[f"EMPIRE_{name.upper()}_HTTP_PORT"] = str(_free_port())
    # Nothing listens here, so the launcher keeps waiting for auth's key set.
    env["EMPIRE_JWKS_URL"] = f"http://127.0.0.1:{_free_port()}/.well-known/jwks.json"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = repo
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shared.run_all",
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            # Its own group, so whatever the launcher leaves behind is ended below.
            start_new_session=True,
        )
    try:
        await _wait_until_serving(f"127.0.0.1:{env['EMPIRE_AUTH_PORT']}")
        process.send_signal(signum)
        await asyncio.wait_for(process.wait(), timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    text = log.read_text()
    assert process.returncode == 0, text[-2000:]
    assert '"message": "auth stopped"' in text
