"""The whole suite as a deployment runs it: each service a process, Envoy in front.

The end-to-end tests and `bench/bench_gateway.py` use this. Services are started
as `python -m services.<name>` with `EMPIRE_*` variables, exactly as `make run`
and the Kubernetes manifests do; the gateway is the real Envoy binary on a
config rendered from deploy/envoy/envoy.template.yaml.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy import render_envoy

ROOT = Path(__file__).resolve().parents[2]
SERVICES = render_envoy.SERVICES
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

T = TypeVar("T")


class StackError(RuntimeError):
    """A process did not come up; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _clean_environment() -> dict[str, str]:
    # The developer's own EMPIRE_* settings must not leak into the stack.
    return {k: v for k, v in os.environ.items() if not k.startswith("EMPIRE_")}


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class ServiceProcess:
    """One service running as `python -m services.<name>`."""

    name: str
    port: int
    http_port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env={**_clean_environment(), **self.env, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def wait_until_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        """Polls the gRPC health service for this service's name."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=SERVICES[self.name])
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise StackError(
                        f"{self.name} exited with {self.process.returncode}:\n"
                        + _log_tail(self.log_path)
                    )
                with contextlib.suppress(grpc.RpcError):
                    answer = health.Check(request, timeout=1.0)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.1)
        raise StackError(
            f"{self.name} not serving after {timeout}s:\n" + _log_tail(self.log_path)
        )

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process)


@dataclass
class Gateway:
    """The real Envoy on a rendered config."""

    config: render_envoy.GatewayConfig
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.config.listen_port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.config.admin_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def start(self) -> Gateway:
        config_path = self.workdir / "envoy.yaml"
        config_path.write_text(render_envoy.render(self.config))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "envoy"),
                "--config-path",
                str(config_path),
                # Several Envoys may run at once on one machine.
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(self.admin_url + path, timeout=2) as response:
            return str(response.read().decode())

    def wait_until_ready(
        self, clusters: tuple[str, ...], timeout: float = START_TIMEOUT_S
    ) -> None:
        """Until Envoy is live and its health checks pass for `clusters`."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError("envoy exited:\n" + _log_tail(self.log_path))
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self.admin("/ready").strip() == "LIVE" and all(
                    self.cluster_healthy(name) for name in clusters
                ):
                    return
            time.sleep(0.1)
        raise StackError(
            f"envoy not ready for {clusters} after {timeout}s:\n"
            + _log_tail(self.log_path)
        )

    def cluster_healthy(self, name: str) -> bool:
        lines = self.admin("/clusters").splitlines()
        flags = [
            line
            for line in lines
            if line.startswith(f"{name}::") and "::health_flags::" in line
        ]
        return bool(flags) and all(line.endswith("::healthy") for line in flags)

    def stat(self, name: str) -> int:
        """One counter or gauge from the admin interface, 0 when absent."""
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process)


class BackgroundLoop:
    """An asyncio loop on its own thread, for async helpers in sync fixtures."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        if not self._thread.is_alive():
            self._loop.close()


@dataclass
class Stack:
    """Ports, secrets and processes of one running suite."""

    workdir: Path
    common_env: dict[str, str]
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    gateway: Gateway | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def add_service(self, name: str, env: dict[str, str]) -> ServiceProcess:
        """Reserve ports for `name`; `env` adds to the stack's common variables."""
        service = ServiceProcess(
            name=name,
            port=free_port(),
            http_port=free_port(),
            env=env,
            log_path=self.workdir / f"{name}.log",
        )
        self.services[name] = service
        return service

    def start_services(self, *names: str) -> None:
        """Start `names` together, then wait for each to serve."""
        for name in names:
            service = self.services[name]
            key = name.upper()
            service.env = {
                **self.common_env,
                f"EMPIRE_{key}_PORT": str(service.port),
                f"EMPIRE_{key}_HTTP_PORT": str(service.http_port),
                **service.env,
            }
            service.start()
        for name in names:
            self.services[name].wait_until_serving()

    def gateway_config(self, **overrides: Any) -> render_envoy.GatewayConfig:
        # Services not started yet get a port nobody listens on; their cluster
        # stays unhealthy until they come.
        upstreams = {
            name: render_envoy.Upstream(
                "127.0.0.1", self.services[name].port if name in self.services else 1
            )
            for name in SERVICES
        }
        base = render_envoy.GatewayConfig(
            listen_port=free_port(),
            metrics_port=free_port(),
            admin_port=free_port(),
            upstreams=upstreams,
            auth_http_port=self.services["auth"].http_port,
            descriptor_path=str(ROOT / "deploy" / "envoy" / "empire.pb"),
            health_check_interval="1s",
            health_check_no_traffic_interval="0.5s",
        )
        return replace(base, **overrides)

    def start_gateway(self, config: render_envoy.GatewayConfig) -> Gateway:
        self.gateway = Gateway(config, self.workdir).start()
        return self.gateway

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for service in reversed(list(self.services.values())):
            service.stop()
        for cleanup in reversed(self.cleanups):
            cleanup()


@contextlib.contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    try:
        yield stack
    finally:
        stack.stop()
