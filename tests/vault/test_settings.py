"""EMPIRE_VAULT_* settings: defaults, and bad values named at start."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from services.vault.runtime import development_master_key
from services.vault.settings import load_settings
from shared.config import Env, SettingsError


def test_defaults_use_the_embedded_sqlite_store() -> None:
    settings = load_settings(Env({}))

    assert settings.database_url == "sqlite:///var/vault.db"
    assert settings.master_key is None
    assert settings.max_versions == 10


def test_master_key_from_a_file(tmp_path: Path) -> None:
    key = os.urandom(32)
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(key).decode() + "\n")

    settings = load_settings(Env({"EMPIRE_VAULT_MASTER_KEY_FILE": str(path)}))

    assert settings.master_key == key


def test_short_master_key_is_refused_without_echoing_it() -> None:
    short = base64.b64encode(b"sixteen-byte-key").decode()

    with pytest.raises(SettingsError) as caught:
        load_settings(Env({"EMPIRE_VAULT_MASTER_KEY": short}))

    assert "EMPIRE_VAULT_MASTER_KEY" in str(caught.value)
    assert short not in str(caught.value)


def test_master_key_is_not_in_the_settings_repr() -> None:
    key = os.urandom(32)
    encoded = base64.b64encode(key).decode()

    settings = load_settings(Env({"EMPIRE_VAULT_MASTER_KEY": encoded}))

    assert repr(key) not in repr(settings)


def test_bad_max_versions_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="EMPIRE_VAULT_MAX_VERSIONS"):
        load_settings(Env({"EMPIRE_VAULT_MAX_VERSIONS": "0"}))


def test_development_start_generates_a_private_master_key_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "var" / "vault-master.key"

    first = development_master_key(path)
    second = development_master_key(path)

    assert first == second
    assert len(first) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert "development master key" in caplog.text
    assert base64.b64encode(first).decode() not in caplog.text
