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


def _render_edited(
    tmp_path: Path, manifest: str, old: str, new: str, overlay: str = "production"
) -> str:
    """The overlay rendered from a copy of deploy/k8s with one edit made."""
    shutil.copytree(ROOT / "deploy" / "k8s", tmp_path / "k8s")
    path = tmp_path / "k8s" / manifest
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return validate.render_overlay(tmp_path / "k8s" / "overlays" / overlay)


_AUTH_LIVENESS = "livenessProbe:\n          grpc:\n            port: 50051\n"


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        pytest.param(
            _AUTH_LIVENESS + "            service: empire.auth.v1.AuthService\n",
            _AUTH_LIVENESS,
            "livenessProbe must name the service empire.auth.v1.AuthService",
            id="liveness-without-service",
        ),
        pytest.param(
            "readinessProbe:\n          grpc:\n            port: 50051\n"
            "            service: empire.auth.v1.AuthService\n",
            "readinessProbe:\n          grpc:\n            port: 50051\n"
            "            service: empire.vault.v1.VaultService\n",
            "readinessProbe must name the service empire.auth.v1.AuthService",
            id="readiness-names-another-service",
        ),
        pytest.param(
            "readinessProbe:\n          grpc:\n            port: 50051\n"
            "            service: empire.auth.v1.AuthService\n",
            "readinessProbe:\n          httpGet:\n            path: /healthz\n"
            "            port: 8051\n",
            "readinessProbe must be a grpc probe",
            id="readiness-over-http",
        ),
        pytest.param(
            "startupProbe:\n          grpc:\n            port: 50051\n",
            "startupProbe:\n          grpc:\n            port: 8051\n",
            "startupProbe must probe port 50051 by number",
            id="startup-on-the-http-port",
        ),
        pytest.param(
            "        startupProbe:\n          grpc:\n            port: 50051\n"
            "            service: empire.auth.v1.AuthService\n"
            "          periodSeconds: 2\n          failureThreshold: 30\n",
            "",
            "startupProbe must be a grpc probe",
            id="no-startup-probe",
        ),
    ],
)
def test_validate_requires_grpc_probes_naming_the_service(
    tmp_path: Path, old: str, new: str, complaint: str
) -> None:
    rendered = _render_edited(tmp_path, "base/auth.yaml", old, new)

    with pytest.raises(validate.ValidationError, match=complaint):
        validate.validate_manifests(rendered)


def test_policy_refuses_a_probe_on_a_named_port() -> None:
    # The schema refuses this too; the policy must not rely on it.
    rendered = validate.render_overlay(validate.OVERLAYS_DIR / "production")
    objects = list(yaml.safe_load_all(rendered))
    cache = next(
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "cache"
    )
    cache["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"][
        "port"
    ] = "grpc"

    with pytest.raises(
        validate.ValidationError, match="livenessProbe must probe port 50053 by number"
    ):
        validate.check_policy(objects)


@pytest.mark.parametrize(
    ("manifest", "old", "new"),
    [
        pytest.param(
            "base/kustomization.yaml",
            "EMPIRE_SHUTDOWN_GRACE_SECONDS=10",
            "EMPIRE_SHUTDOWN_GRACE_SECONDS=25",
            id="longer-drain-in-the-configmap",
        ),
        pytest.param(
            "base/vault.yaml",
            "        env:\n",
            "        env:\n        - name: EMPIRE_SHUTDOWN_GRACE_SECONDS\n"
            '          value: "25"\n',
            id="longer-drain-in-the-container-env",
        ),
        pytest.param(
            "base/cache.yaml",
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds: 15",
            id="shorter-grace-period",
        ),
        pytest.param(
            "base/llm.yaml",
            'command: ["sleep", "5"]',
            'command: ["sleep", "20"]',
            id="longer-prestop-pause",
        ),
    ],
)
def test_validate_fails_when_the_grace_period_cannot_cover_the_drain(
    tmp_path: Path, manifest: str, old: str, new: str
) -> None:
    rendered = _render_edited(tmp_path, manifest, old, new)

    with pytest.raises(
        validate.ValidationError, match="terminationGracePeriodSeconds .* must exceed"
    ):
        validate.validate_manifests(rendered)


def test_grace_period_rule_counts_the_default_drain_when_unset() -> None:
    rendered = validate.render_overlay(validate.OVERLAYS_DIR / "production")
    objects = list(yaml.safe_load_all(rendered))
    config = next(
        o for o in objects if o["kind"] == "ConfigMap" and "EMPIRE_HOST" in o["data"]
    )
    del config["data"]["EMPIRE_SHUTDOWN_GRACE_SECONDS"]
    auth = next(
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "auth"
    )
    # preStop 5 s + the default drain 5 s + 5 s to close.
    auth["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 16
    validate.check_policy(objects)
    auth["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 15

    with pytest.raises(
        validate.ValidationError,
        match="Deployment/auth container auth: terminationGracePeriodSeconds 15",
    ):
        validate.check_policy(objects)


def test_validate_refuses_a_container_that_turns_run_as_non_root_off(
    tmp_path: Path,
) -> None:
    rendered = _render_edited(
        tmp_path,
        "base/vault.yaml",
        "          runAsNonRoot: true\n          capabilities:",
        "          runAsNonRoot: false\n          capabilities:",
    )

    with pytest.raises(
        validate.ValidationError,
        match="Deployment/vault container vault: runAsNonRoot must not be turned off",
    ):
        validate.validate_manifests(rendered)


def _without_network_policy(text: str) -> str:
    """The file with its NetworkPolicy (the last document) cut off."""
    return text.split("kind: NetworkPolicy")[0].rsplit("---", 1)[0]


@pytest.mark.parametrize(
    ("manifest", "overlay", "services"),
    [
        pytest.param(
            "base/cache.yaml", "production", ["cache", "cache-headless"], id="cache"
        ),
        pytest.param(
            "overlays/development/redis.yaml", "development", ["redis"], id="dev-redis"
        ),
    ],
)
def test_validate_fails_on_a_service_without_a_network_policy(
    tmp_path: Path, manifest: str, overlay: str, services: list[str]
) -> None:
    shutil.copytree(ROOT / "deploy" / "k8s", tmp_path / "k8s")
    path = tmp_path / "k8s" / manifest
    path.write_text(_without_network_policy(path.read_text()))
    rendered = validate.render_overlay(tmp_path / "k8s" / "overlays" / overlay)

    with pytest.raises(validate.ValidationError) as failure:
        validate.validate_manifests(rendered)
    for service in services:
        assert f"Service/{service}: no NetworkPolicy" in str(failure.value)


def test_policy_ignores_a_network_policy_that_only_governs_egress() -> None:
    rendered = validate.render_overlay(validate.OVERLAYS_DIR / "production")
    objects = list(yaml.safe_load_all(rendered))
    policy = next(
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "llm"
    )
    policy["spec"]["policyTypes"] = ["Egress"]
    policy["spec"]["egress"] = policy["spec"].pop("ingress")

    with pytest.raises(validate.ValidationError, match="Service/llm: no NetworkPolicy"):
        validate.check_policy(objects)
