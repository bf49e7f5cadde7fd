"""`EMPIRE_AUTH_*` settings: defaults, and bad values named at start."""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path

import pytest

from empire.auth.v1 import auth_service_pb2 as pb
from empire.auth.v1 import auth_service_pb2_grpc as pb_grpc
from services.auth.app import create_service
from services.auth.settings import load_settings
from shared.config import Env, SettingsError
from tests.harness.servers import serve, test_server_settings


def test_defaults_start_an_embedded_development_service() -> None:
    settings = load_settings(Env({}))

    assert settings.database_url == "sqlite:///var/auth.db"
    assert settings.development and settings.master_key is None
    assert settings.key_algorithm == "EdDSA"
    assert settings.roles == {"admin": frozenset({"*"})}
    assert settings.min_token_ttl_seconds <= settings.default_token_ttl_seconds
    assert settings.sync_interval_seconds < settings.jwks_max_age_seconds


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"EMPIRE_AUTH_KEY_ALGORITHM": "HS256"}, "EMPIRE_AUTH_KEY_ALGORITHM"),
        ({"EMPIRE_AUTH_MASTER_KEY": "c2hvcnQ="}, "EMPIRE_AUTH_MASTER_KEY"),
        ({"EMPIRE_AUTH_MASTER_KEY": "!!not base64!!"}, "EMPIRE_AUTH_MASTER_KEY"),
        ({"EMPIRE_AUTH_DEVELOPMENT": "false"}, "EMPIRE_AUTH_MASTER_KEY"),
        (
            {"EMPIRE_AUTH_BOOTSTRAP_API_KEY": "esk_nope"},
            "EMPIRE_AUTH_BOOTSTRAP_API_KEY",
        ),
        ({"EMPIRE_AUTH_TOKEN_TTL_SECONDS": "5"}, "EMPIRE_AUTH_TOKEN_TTL_SECONDS"),
        ({"EMPIRE_AUTH_ROLES": "admin=x:y"}, "EMPIRE_AUTH_ROLES"),
        ({"EMPIRE_AUTH_ROLES": "no equals sign"}, "EMPIRE_AUTH_ROLES"),
        (
            {"EMPIRE_AUTH_SYNC_INTERVAL_SECONDS": "600"},
            "EMPIRE_AUTH_SYNC_INTERVAL_SECONDS",
        ),
        (
            {"EMPIRE_AUTH_JWKS_MAX_AGE_SECONDS": "-1"},
            "EMPIRE_AUTH_JWKS_MAX_AGE_SECONDS",
        ),
    ],
)
def test_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(variable)):
        load_settings(Env(env))


def test_master_key_can_come_from_a_file(tmp_path: Path) -> None:
    key = bytes(range(32))
    path = tmp_path / "master"
    path.write_text(base64.b64encode(key).decode() + "\n")
    env = {"EMPIRE_AUTH_DEVELOPMENT": "false", "EMPIRE_AUTH_MASTER_KEY_FILE": str(path)}

    assert load_settings(Env(env)).master_key == key
    missing = {**env, "EMPIRE_AUTH_MASTER_KEY_FILE": str(tmp_path / "absent")}
    with pytest.raises(SettingsError, match="EMPIRE_AUTH_MASTER_KEY_FILE"):
        load_settings(Env(missing))


def test_master_key_is_never_echoed() -> None:
    wrong = base64.b64encode(b"k" * 31).decode()
    with pytest.raises(SettingsError) as raised:
        load_settings(Env({"EMPIRE_AUTH_MASTER_KEY": wrong}))
    assert wrong not in str(raised.value)


def test_roles_map_to_scopes() -> None:
    settings = load_settings(
        Env({"EMPIRE_AUTH_ROLES": "reader=secrets:read cache:read; svc=llm:complete"})
    )
    assert settings.roles["reader"] == {"secrets:read", "cache:read"}
    assert settings.roles["svc"] == {"llm:complete"}
    assert settings.roles["admin"] == {"*"}


async def test_development_first_start_prints_a_working_admin_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(
        Env(
            {
                "EMPIRE_AUTH_DATABASE_URL": f"sqlite:///{tmp_path / 'auth.db'}",
                "EMPIRE_AUTH_DEV_MASTER_KEY_FILE": str(tmp_path / "master.key"),
            }
        )
    )
    settings = dataclasses.replace(settings, server=test_server_settings("auth"))

    async with serve(await create_service(settings), settings.server) as server:
        printed = re.findall(r"esk_\w+", capsys.readouterr().err)
        assert len(printed) == 1
        assert (tmp_path / "master.key").stat().st_mode & 0o077 == 0
        async with server.channel() as channel:
            stub = pb_grpc.AuthServiceStub(channel)
            exchanged = await stub.ExchangeApiKey(
                pb.ExchangeApiKeyRequest(api_key=printed[0])
            )
            assert list(exchanged.scopes) == ["*"]

    # A second start finds keys and prints nothing.
    async with serve(await create_service(settings), settings.server):
        assert "esk_" not in capsys.readouterr().err
