"""An operator's grpcurl, as the README's Operations section shows it: through the
gateway with the descriptor set, and straight at a service with reflection."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.calls import b64, rest
from tests.e2e.conftest import Suite
from tests.e2e.stack import ROOT
from tests.harness.grpcurl import grpcurl_path

DESCRIPTOR_SET = ROOT / "deploy" / "envoy" / "empire.pb"


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [grpcurl_path(), "-plaintext", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects grpcurl printed one after another."""
    decoder = json.JSONDecoder()
    objects, position = [], 0
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        obj, position = decoder.raw_decode(text, position)
        objects.append(obj)
    return objects


def _put_secret(suite: Suite, key_id: str) -> None:
    answer = rest(
        suite.url,
        "POST",
        "/api/empire-security/secrets",
        {"key_id": key_id, "value": b64(b"grpcurl")},
        suite.admin_token,
    )
    assert answer.status == 200, answer.body


def test_grpcurl_through_the_gateway_with_the_descriptor_set(suite: Suite) -> None:
    _put_secret(suite, "ops/grpcurl-gateway")

    result = _grpcurl(
        "-protoset",
        str(DESCRIPTOR_SET),
        "-H",
        f"authorization: Bearer {suite.admin_token}",
        "-d",
        '{"key_id": "ops/grpcurl-gateway"}',
        suite.gateway.target,
        "empire.vault.v1.VaultService/GetSecret",
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["value"] == b64(b"grpcurl")


def test_grpcurl_through_the_gateway_needs_a_token(suite: Suite) -> None:
    result = _grpcurl(
        "-protoset",
        str(DESCRIPTOR_SET),
        "-d",
        '{"key_id": "ops/anything"}',
        suite.gateway.target,
        "empire.vault.v1.VaultService/GetSecret",
    )

    assert result.returncode != 0
    assert "Unauthenticated" in result.stderr


def test_grpcurl_straight_at_a_service_with_reflection(suite: Suite) -> None:
    _put_secret(suite, "ops/grpcurl-direct")
    vault = suite.stack.services["vault"].target

    listed = _grpcurl(vault, "list")
    result = _grpcurl(
        "-H",
        f"authorization: Bearer {suite.admin_token}",
        "-d",
        '{"key_id": "ops/grpcurl-direct"}',
        vault,
        "empire.vault.v1.VaultService/GetSecret",
    )

    assert "empire.vault.v1.VaultService" in listed.stdout.split()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["value"] == b64(b"grpcurl")


def test_vault_backup_and_restore_with_grpcurl_through_the_gateway(
    suite: Suite, tmp_path: Path
) -> None:
    key_id = "ops/backed-up"
    auth = ["-H", f"authorization: Bearer {suite.admin_token}"]
    _put_secret(suite, key_id)  # version 1 holds b"grpcurl"
    backup = _grpcurl(
        "-protoset",
        str(DESCRIPTOR_SET),
        *auth,
        suite.gateway.target,
        "empire.vault.v1.VaultService/Backup",
    )
    assert backup.returncode == 0, backup.stderr
    changed = rest(
        suite.url,
        "POST",
        "/api/empire-security/secrets",
        {"key_id": key_id, "value": b64(b"changed after the backup")},
        suite.admin_token,
    )
    assert changed.status == 200, changed.body

    # grpcurl prints one JSON object per streamed message; Restore takes them
    # back in order, the first one saying to replace the vault's content.
    chunks = _json_objects(backup.stdout)
    assert chunks and all(chunk.get("data") for chunk in chunks)
    chunks[0]["replace_existing"] = True
    (tmp_path / "restore.jsonl").write_text("\n".join(json.dumps(c) for c in chunks))
    with (tmp_path / "restore.jsonl").open() as stdin:
        restored = subprocess.run(
            [
                grpcurl_path(),
                "-plaintext",
                "-protoset",
                str(DESCRIPTOR_SET),
                *auth,
                "-d",
                "@",
                suite.gateway.target,
                "empire.vault.v1.VaultService/Restore",
            ],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    read_back = rest(
        suite.url,
        "GET",
        f"/api/empire-security/secrets/{key_id}",
        token=suite.admin_token,
    )

    assert restored.returncode == 0, restored.stderr
    assert int(json.loads(restored.stdout)["secrets"]) >= 1
    assert read_back.body["value"] == b64(b"grpcurl")
