"""`make validate`: the gateway config and the Kubernetes overlays, checked offline.

- Envoy: both renders of the template pass `envoy --mode validate`, and the
  renders kept in the tree match a fresh render.
- Kubernetes: each overlay renders with `kubectl kustomize`, passes
  `kubernetes-validate --strict` for KUBERNETES_VERSION, and keeps the house
  rules (non-root, read-only root, no capabilities, probes, no literal secrets).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from deploy import render_envoy

# The oldest Kubernetes release the manifests promise to work on.
KUBERNETES_VERSION = "1.32.0"
DEPLOY_DIR = Path(__file__).resolve().parent
OVERLAYS_DIR = DEPLOY_DIR / "k8s" / "overlays"
OVERLAYS = ("development", "production")

# Environment variables and ConfigMap keys with these names hold credentials;
# they must come from a Secret. The JWKS URL is public and exempt.
_SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY|_URL)$")
_PUBLIC_NAMES = {"EMPIRE_JWKS_URL"}


class ValidationError(Exception):
    """One check failed; the message says which and why."""


def tool(name: str) -> str:
    """A command from the virtualenv beside this Python, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ValidationError(f"{name} is not installed (make install provides it)")
    return found


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise ValidationError(f"{Path(command[0]).name} failed:\n{output[-4000:]}")
    return result.stdout


def validate_envoy_config(config_text: str) -> None:
    """Runs `envoy --mode validate` on one rendered config."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "envoy.yaml"
        path.write_text(config_text)
        _run([tool("envoy"), "--mode", "validate", "-c", str(path), "-l", "error"])


def validate_gateway(template: Path = render_envoy.TEMPLATE) -> None:
    """Both renders of `template` are valid Envoy configs."""
    descriptor = DEPLOY_DIR / "envoy" / "empire.pb"
    if not descriptor.exists():
        raise ValidationError(f"{descriptor} is missing: run `make proto`")
    local = dataclasses.replace(
        render_envoy.local_config(), descriptor_path=str(descriptor)
    )
    # The cluster render reads the descriptor from the pod's volume; point it at
    # the local copy so Envoy can load it here.
    cluster = dataclasses.replace(
        render_envoy.kubernetes_config(), descriptor_path=str(descriptor)
    )
    for config in (local, cluster):
        validate_envoy_config(render_envoy.render(config, template))


def check_renders_current() -> None:
    """The renders in the tree are what the template produces today."""
    pairs = (
        (render_envoy.LOCAL_CONFIG, render_envoy.local_config()),
        (render_envoy.K8S_CONFIG, render_envoy.kubernetes_config()),
    )
    for path, config in pairs:
        expected = render_envoy.HEADER + render_envoy.render(config)
        if not path.exists() or path.read_text() != expected:
            raise ValidationError(
                f"{path} is stale: run `python -m deploy.render_envoy`"
            )


def render_overlay(overlay: Path) -> str:
    """The manifests `kubectl apply -k overlay` would apply."""
    return _run([tool("kubectl"), "kustomize", str(overlay)])


def validate_manifests(manifests: str, version: str = KUBERNETES_VERSION) -> None:
    """Schema check of every object, rejecting fields the schema does not know."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "manifests.yaml"
        path.write_text(manifests)
        _run(
            [
                tool("kubernetes-validate"),
                "--strict",
                "--quiet",
                "--kubernetes-version",
                version,
                str(path),
            ]
        )
    check_policy(list(yaml.safe_load_all(manifests)))


def check_policy(objects: list[dict[str, Any]]) -> None:
    """House rules the schema cannot express."""
    problems: list[str] = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "ConfigMap":
            problems += [
                f"{name}: {key} looks like a credential; use a Secret"
                for key in obj.get("data", {})
                if _SECRET_NAME.search(key) and key not in _PUBLIC_NAMES
            ]
        pod = _pod_spec(obj)
        if pod is not None:
            problems += _pod_problems(name, pod)
    if problems:
        raise ValidationError("policy:\n" + "\n".join(problems))


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in ("Deployment", "StatefulSet"):
        spec: dict[str, Any] = obj["spec"]["template"]["spec"]
        return spec
    return None


def _pod_problems(name: str, pod: dict[str, Any]) -> list[str]:
    problems = []
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: automountServiceAccountToken must be false")
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        problems.append(f"{name}: runAsNonRoot must be true")
    for container in _containers(pod):
        where = f"{name} container {container['name']}"
        context = container.get("securityContext", {})
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem must be true")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities must drop ALL")
        if "resources" not in container:
            problems.append(f"{where}: no resources")
        problems += [
            f"{where}: {env['name']} is a literal; take it from a Secret"
            for env in container.get("env", [])
            if _SECRET_NAME.search(env["name"])
            and env["name"] not in _PUBLIC_NAMES
            and "value" in env
        ]
    for container in pod["containers"]:
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in container:
                problems.append(f"{name} container {container['name']}: no {probe}")
    return problems


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def main() -> int:
    checks: list[tuple[str, Any]] = [
        ("envoy: renders are current", check_renders_current),
        ("envoy: --mode validate", validate_gateway),
    ]
    for overlay in OVERLAYS:
        checks.append(
            (
                f"k8s: overlays/{overlay} (Kubernetes {KUBERNETES_VERSION}, strict)",
                lambda o=overlay: validate_manifests(render_overlay(OVERLAYS_DIR / o)),
            )
        )
    failed = 0
    for label, check in checks:
        try:
            check()
        except ValidationError as error:
            failed += 1
            print(f"FAIL {label}\n{error}", file=sys.stderr)
        else:
            print(f"ok   {label}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
