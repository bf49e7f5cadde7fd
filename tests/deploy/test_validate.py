"""`make validate`: it passes on the tree and fails on a misspelt field."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2

from deploy import render_envoy, validate

ROOT = Path(__file__).resolve().parents[2]


def _public_methods_in_contract() -> set[str]:
    from empire.api.v1 import access_pb2

    data = (ROOT / "deploy" / "envoy" / "empire.pb").read_bytes()
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(data)
    public: set[str] = set()
    for file in descriptors.file:
        for service in file.service:
            full_name = f"{file.package}.{service.name}"
            if full_name not in render_envoy.SERVICES.values():
                continue
            for method in service.method:
                rule: Any = method.options.Extensions[access_pb2.access]  # type: ignore[index]
                if rule.public:
                    public.add(f"{full_name}/{method.name}")
    return public


def test_make_validate_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.validate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok ") == 4


def test_validate_fails_on_a_misspelt_envoy_field(tmp_path: Path) -> None:
    template = tmp_path / "envoy.template.yaml"
    text = render_envoy.TEMPLATE.read_text()
    template.write_text(text.replace("stat_prefix: gateway", "stat_prefx: gateway"))

    with pytest.raises(validate.ValidationError, match="stat_prefx"):
        validate.validate_gateway(template)


def test_validate_fails_on_a_misspelt_manifest_field(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "deploy" / "k8s", tmp_path / "k8s")
    manifest = tmp_path / "k8s" / "base" / "vault.yaml"
    text = manifest.read_text()
    assert "terminationGracePeriodSeconds:" in text
    manifest.write_text(
        text.replace("terminationGracePeriodSeconds:", "terminationGracePeriodSecond:")
    )

    rendered = validate.render_overlay(tmp_path / "k8s" / "overlays" / "production")
    with pytest.raises(validate.ValidationError, match="terminationGracePeriodSecond"):
        validate.validate_manifests(rendered)


def test_validate_fails_on_a_stale_render(tmp_path: Path, monkeypatch) -> None:
    stale = tmp_path / "envoy.yaml"
    stale.write_text(render_envoy.LOCAL_CONFIG.read_text().replace("50052", "50099"))
    monkeypatch.setattr(render_envoy, "LOCAL_CONFIG", stale)

    with pytest.raises(validate.ValidationError, match="stale"):
        validate.check_renders_current()


def test_policy_refuses_a_literal_credential() -> None:
    rendered = validate.render_overlay(validate.OVERLAYS_DIR / "development")
    objects = list(yaml.safe_load_all(rendered))
    validate.check_policy(objects)
    vault = next(
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "vault"
    )
    env = vault["spec"]["template"]["spec"]["containers"][0]["env"]
    url = next(e for e in env if e["name"] == "EMPIRE_VAULT_DATABASE_URL")
    del url["valueFrom"]
    url["value"] = "postgresql://empire:hunter2@postgres/vault"

    with pytest.raises(
        validate.ValidationError, match="VAULT_DATABASE_URL is a literal"
    ):
        validate.check_policy(objects)


def test_gateway_exempts_exactly_the_public_methods_of_the_contract() -> None:
    assert set(render_envoy.PUBLIC_METHODS) == _public_methods_in_contract()

    for method in render_envoy.PUBLIC_METHODS:
        assert f'path: "/{method}"' in render_envoy.LOCAL_CONFIG.read_text()


def test_gateway_transcodes_the_four_services() -> None:
    config = render_envoy.LOCAL_CONFIG.read_text()

    for service in render_envoy.SERVICES.values():
        assert f"- {service}\n" in config
        assert f'prefix: "/{service}/"' in config
        assert f"service_name: {service}\n" in config
