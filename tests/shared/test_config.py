"""Settings are typed and validated; a bad EMPIRE_* value stops a service, naming it."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from shared.config import Env, SettingsError, load_server_settings


def test_defaults_need_no_environment() -> None:
    settings = load_server_settings("vault", Env({}))
    assert (settings.host, settings.port) == ("127.0.0.1", 50052)


@pytest.mark.parametrize(
    "variable, value",
    [
        pytest.param("EMPIRE_VAULT_PORT", "http", id="port-not-int"),
        pytest.param("EMPIRE_VAULT_PORT", "70000", id="port-range"),
        pytest.param("EMPIRE_LOG_LEVEL", "LOUD", id="choice"),
        pytest.param("EMPIRE_AUTH_ENABLED", "perhaps", id="bool"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_server_settings("vault", Env({variable: value}))


def test_long_bad_value_is_not_echoed() -> None:
    secret_looking = "sk-" + "x" * 40
    with pytest.raises(SettingsError) as caught:
        Env({"EMPIRE_PORT": secret_looking}).int("PORT", 1)
    assert secret_looking not in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = load_server_settings("auth", Env({}))
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("service", ["auth", "vault", "cache", "llm"])
async def test_service_refuses_to_start_on_a_bad_variable(service: str) -> None:
    env = {**os.environ, "EMPIRE_LOG_LEVEL": "LOUD"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"services.{service}",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)

    assert process.returncode == 2
    assert "EMPIRE_LOG_LEVEL" in err.decode()
