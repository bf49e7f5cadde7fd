"""OpenBao servers (dev mode in memory, or on PostgreSQL) and a KV v2 client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.processes import free_port, stop

START_TIMEOUT_S = 30.0


class OpenBaoKv:
    """KV v2 reads and writes on the dev server's `secret/` mount."""

    def __init__(self, address: str, token: str, connections: int) -> None:
        self.address = address
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            headers={"X-Vault-Token": token},
        )

    async def write(self, path: str, value: bytes) -> None:
        body = {"data": {"value": base64.b64encode(value).decode()}}
        async with self._session.post(
            f"{self.address}/v1/secret/data/{path}", json=body
        ) as response:
            response.raise_for_status()
            await response.read()

    async def read(self, path: str) -> bytes:
        async with self._session.get(
            f"{self.address}/v1/secret/data/{path}"
        ) as response:
            response.raise_for_status()
            payload: dict[str, Any] = await response.json()
        return base64.b64decode(payload["data"]["data"]["value"])

    async def first_write(self, path: str, value: bytes) -> None:
        """A write retried while a fresh KV v2 mount is still upgrading itself."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while True:
            try:
                return await self.write(path, value)
            except aiohttp.ClientResponseError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self._session.close()


@contextlib.asynccontextmanager
async def dev_server(bao: Path) -> AsyncIterator[tuple[str, str]]:
    """Run `bao server -dev` on a free port; yield its address and root token."""
    token = secrets.token_urlsafe(24)
    port = free_port()
    arguments = ["server", "-dev", f"-dev-root-token-id={token}"]
    arguments.append(f"-dev-listen-address=127.0.0.1:{port}")
    async with _bao_process(bao, arguments, port, token) as address:
        async with aiohttp.ClientSession() as session:
            await _until_active(session, address)
        yield address, token


@contextlib.asynccontextmanager
async def postgres_server(
    bao: Path, database_url: str, connections: int
) -> AsyncIterator[tuple[str, str]]:
    """A real (non-dev) server storing in PostgreSQL, initialised, unsealed and
    with KV v2 mounted at `secret/`; yields its address and root token.

    `max_idle_connections` is raised to the load's concurrency: at its default
    (a handful) OpenBao reconnects to PostgreSQL for most requests.
    """
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".hcl") as config:
        config.write(
            f'storage "postgresql" {{\n'
            f'  connection_url = "{_without_tls(database_url)}"\n'
            f"  max_idle_connections = {connections}\n"
            f"}}\n"
            f'listener "tcp" {{\n'
            f'  address = "127.0.0.1:{port}"\n'
            f"  tls_disable = true\n"
            f"}}\n"
            f'api_addr = "http://127.0.0.1:{port}"\n'
            f"disable_mlock = true\n"
        )
        config.flush()
        arguments = ["server", f"-config={config.name}"]
        async with _bao_process(bao, arguments, port, None) as address:
            token = await _initialise(address)
            yield address, token


@contextlib.asynccontextmanager
async def _bao_process(
    bao: Path, arguments: list[str], port: int, token: str | None
) -> AsyncIterator[str]:
    address = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as home, open(f"{home}/bao.log", "wb") as log:
        # HOME: dev mode saves the root token in a file under $HOME; keep it in
        # this temporary directory, which goes with the server.
        process = subprocess.Popen(
            [str(bao), *arguments, "-log-level=warn"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "HOME": home},
            cwd=home,
        )
        try:
            await _wait_until_ready(address, process, Path(log.name), token)
            yield address
        finally:
            stop(process)


async def _initialise(address: str) -> str:
    """`bao operator init` with one key share, unseal, mount KV v2; the root token."""
    async with aiohttp.ClientSession() as session:
        async with session.put(
            f"{address}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}
        ) as response:
            response.raise_for_status()
            keys = await response.json()
        async with session.put(
            f"{address}/v1/sys/unseal", json={"key": keys["keys_base64"][0]}
        ) as response:
            response.raise_for_status()
        token: str = keys["root_token"]
        await _until_active(session, address)
        async with session.post(
            f"{address}/v1/sys/mounts/secret",
            json={"type": "kv", "options": {"version": "2"}},
            headers={"X-Vault-Token": token},
        ) as response:
            response.raise_for_status()
    return token


async def _until_active(session: aiohttp.ClientSession, address: str) -> None:
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        async with session.get(f"{address}/v1/sys/health") as response:
            if response.status == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError("bao did not become active after unsealing")


def _without_tls(database_url: str) -> str:
    # OpenBao's driver tries TLS first; the local test server speaks plain TCP.
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}sslmode=disable"


async def _wait_until_ready(
    address: str, process: subprocess.Popen[bytes], log: Path, token: str | None
) -> None:
    """Until the HTTP API answers (sealed or not), or the process died."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            if process.poll() is not None:
                # The log's last line says why; the token must not travel on.
                text = log.read_text(errors="replace")
                text = text.replace(token, "<token>") if token else text
                tail = " ".join(text.strip().splitlines()[-1:])[:200]
                raise RuntimeError(
                    f"bao exited with status {process.returncode}: {tail}"
                )
            with contextlib.suppress(aiohttp.ClientError):
                # 200 active, 501 not initialised, 503 sealed: all are up.
                async with session.get(f"{address}/v1/sys/health") as response:
                    if response.status in (200, 501, 503):
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"bao did not become ready within {START_TIMEOUT_S:.0f}s")
