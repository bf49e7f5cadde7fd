"""LiteLLM's proxy server (from `litellm[proxy]`) in front of the fake provider."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.processes import free_port, stop, wait_for_port

START_TIMEOUT_S = 120.0


@contextlib.contextmanager
def running_proxy(
    cli: Path | None, base_url: str, model: str, env: dict[str, str]
) -> Iterator[tuple[str, str]]:
    """The proxy serving route "chat" from `base_url`; yields (its URL, or why not).

    `env` must hold LITELLM_MASTER_KEY: the proxy refuses to start without one.
    """
    if cli is None:
        yield "", "litellm[proxy] did not install"
        return
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "config.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: chat\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {base_url}\n"
            "      api_key: bench\n"
            "litellm_settings:\n"
            "  num_retries: 0\n"
        )
        port = free_port()
        log = Path(directory) / "proxy.log"
        try:
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    [str(cli), "--config", str(config), "--host", "127.0.0.1"]
                    + ["--port", str(port), "--num_workers", "1"],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=directory,
                )
        except OSError as error:
            yield "", f"the proxy could not run: {error.strerror}"
            return
        try:
            if _proxy_ready(port, process):
                yield f"http://127.0.0.1:{port}/v1", ""
            else:
                yield "", f"the proxy did not start: {_last_error(log, env)}"
        finally:
            stop(process)


def _last_error(log: Path, env: dict[str, str]) -> str:
    """The log's last error line, without the master key should it appear there."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line]
    errors = [line for line in lines if "Error" in line or "refused" in line]
    tail = (errors or lines or ["no output"])[-1][:200]
    key = env.get("LITELLM_MASTER_KEY")
    return tail.replace(key, "<key>") if key else tail


def _proxy_ready(port: int, process: subprocess.Popen[bytes]) -> bool:
    if not wait_for_port(port, process, START_TIMEOUT_S):
        return False
    # The port opens before the app has loaded its model list.
    deadline = time.monotonic() + START_TIMEOUT_S
    url = f"http://127.0.0.1:{port}/health/readiness"
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return True
        time.sleep(0.3)
    return False
