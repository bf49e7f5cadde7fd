"""The master key of auth and vault: from settings, or a private development file."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from shared.config import Env, SettingsError
from shared.master_key import decode_master_key, development_master_key, read_master_key


def test_master_key_reads_standard_and_url_safe_base64() -> None:
    key = bytes([0xFB, 0xFF] * 16)  # encodes with '+' and '/' in standard base64
    standard = base64.b64encode(key).decode()
    url_safe = base64.urlsafe_b64encode(key).decode().rstrip("=")

    assert decode_master_key(standard, "V") == key
    assert decode_master_key(url_safe, "V") == key


@pytest.mark.parametrize(
    "text",
    [base64.b64encode(b"short").decode(), "!!not base64!!", "a b c"],
)
def test_bad_master_key_names_the_variable_and_hides_the_value(text: str) -> None:
    with pytest.raises(SettingsError) as caught:
        decode_master_key(text, "EMPIRE_X_MASTER_KEY")
    assert "EMPIRE_X_MASTER_KEY" in str(caught.value)
    assert text not in str(caught.value)


def test_master_key_comes_from_the_services_variable_or_file(tmp_path: Path) -> None:
    key = os.urandom(32)
    path = tmp_path / "key"
    path.write_text(base64.b64encode(key).decode() + "\n")
    inline = base64.b64encode(key).decode()

    assert read_master_key(Env({"EMPIRE_AUTH_MASTER_KEY": inline}), "auth") == key
    assert read_master_key(Env({"EMPIRE_VAULT_MASTER_KEY_FILE": str(path)}), "vault")
    assert read_master_key(Env({"EMPIRE_AUTH_MASTER_KEY": inline}), "vault") is None


def test_unreadable_master_key_file_names_the_variable(tmp_path: Path) -> None:
    env = Env({"EMPIRE_VAULT_MASTER_KEY_FILE": str(tmp_path / "absent")})

    with pytest.raises(SettingsError, match="EMPIRE_VAULT_MASTER_KEY_FILE"):
        read_master_key(env, "vault")


def test_development_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "master.key"

    first = development_master_key(path)

    assert development_master_key(path) == first
    assert len(first) == 32
    assert path.stat().st_mode & 0o777 == 0o600
