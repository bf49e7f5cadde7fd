"""Settings are typed and validated; a bad EMPIRE_* value stops a service, naming it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sys

import pytest

from shared.config import Env, SettingsError, database_url, load_server_settings
from shared.echo import echo_service
from shared.server import start_server
from tests.harness.servers import test_server_settings
from tests.harness.tokens import LocalIssuer


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
        pytest.param("EMPIRE_CLOCK_LEEWAY_SECONDS", "nan", id="float-nan"),
        pytest.param("EMPIRE_SHUTDOWN_GRACE_SECONDS", "NaN", id="float-nan-grace"),
        pytest.param("EMPIRE_JWKS_MAX_AGE_SECONDS", "inf", id="float-infinite"),
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


def test_database_url_of_another_kind_names_the_variable_not_the_password() -> None:
    url = "mysql://empire:hunter2@db.internal/vault"

    with pytest.raises(SettingsError, match="EMPIRE_VAULT_DATABASE_URL") as caught:
        database_url(Env({"EMPIRE_VAULT_DATABASE_URL": url}), "vault")

    assert "hunter2" not in str(caught.value)
    for accepted in ("postgresql://h/db", "postgres://h/db", "sqlite:///var/v.db"):
        assert database_url(Env({"EMPIRE_VAULT_DATABASE_URL": accepted}), "vault")


def _listening_socket() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


async def test_host_that_cannot_be_listened_on_names_the_variables() -> None:
    # 192.0.2.1 is reserved for documentation: never an address of this machine.
    settings = test_server_settings("auth", host="192.0.2.1")

    with pytest.raises(SettingsError, match="EMPIRE_HOST, EMPIRE_AUTH_PORT"):
        await start_server(echo_service(), settings, LocalIssuer().verifier())


async def test_http_port_in_use_names_the_variable_and_leaves_nothing_serving() -> None:
    with _listening_socket() as taken, _listening_socket() as probe:
        grpc_port = probe.getsockname()[1]
        probe.close()  # free again, for the server to take
        settings = dataclasses.replace(
            test_server_settings("auth"),
            port=grpc_port,
            http_port=taken.getsockname()[1],
        )

        with pytest.raises(SettingsError, match="EMPIRE_AUTH_HTTP_PORT"):
            await start_server(echo_service(), settings, LocalIssuer().verifier())

    with socket.socket() as again:
        again.bind(("127.0.0.1", grpc_port))  # the gRPC side let its port go


async def test_service_that_cannot_listen_stops_with_a_message_not_a_traceback(
    tmp_path,
) -> None:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "EMPIRE_HOST": "192.0.2.1", "PYTHONPATH": repo}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.vault",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)

    assert process.returncode == 2, err.decode()[-2000:]
    assert "vault: cannot start: EMPIRE_HOST, EMPIRE_VAULT_PORT" in err.decode()
    assert "Traceback" not in err.decode()
