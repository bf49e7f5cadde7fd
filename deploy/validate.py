"""`make validate`: the gateway config and the Kubernetes overlays, checked offline.

- Envoy: both renders of the template pass `envoy --mode validate`, and the
  renders kept in the tree match a fresh render.
- Kubernetes: each overlay renders with `kubectl kustomize`, passes
  `kubernetes-validate --strict` for KUBERNETES_VERSION, and keeps the house
  rules (non-root, read-only root, no capabilities, probes, no literal secrets,
  native gRPC probes naming the service, a grace period that covers the drain,
  a NetworkPolicy in front of every Service).
"""

from __future__ import annotations

import dataclasses
import math
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
from deploy.render_envoy import SERVICES

# The oldest Kubernetes release the manifests promise to work on.
KUBERNETES_VERSION = "1.32.0"
DEPLOY_DIR = Path(__file__).resolve().parent
OVERLAYS_DIR = DEPLOY_DIR / "k8s" / "overlays"
OVERLAYS = ("development", "production")

# Environment variables and ConfigMap keys with these names hold credentials;
# they must come from a Secret. The JWKS URL is public and exempt.
_SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY|_URL)$")
_PUBLIC_NAMES = {"EMPIRE_JWKS_URL"}

# How long a service drains after SIGTERM, and its default when unset
# (shared/config.py, load_server_settings).
_DRAIN_VARIABLE = "EMPIRE_SHUTDOWN_GRACE_SECONDS"
_DEFAULT_DRAIN_SECONDS = 5.0
# After the drain the server still closes its HTTP side and its stores; the
# kubelet's SIGKILL must not land in the middle of that.
_SHUTDOWN_MARGIN_SECONDS = 5.0
# What Kubernetes gives a pod that does not say.
_DEFAULT_TERMINATION_GRACE_SECONDS = 30


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
    config_maps = {
        obj["metadata"]["name"]: obj.get("data", {})
        for obj in objects
        if obj["kind"] == "ConfigMap"
    }
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
            service = SERVICES.get(obj["metadata"]["name"])
            if obj["kind"] == "Deployment" and service is not None:
                problems += _service_pod_problems(name, service, pod, config_maps)
    problems += _network_policy_problems(objects)
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
        # A container's own setting wins over the pod's.
        if context.get("runAsNonRoot") is False:
            problems.append(f"{where}: runAsNonRoot must not be turned off")
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


def _service_pod_problems(
    name: str,
    service: str,
    pod: dict[str, Any],
    config_maps: dict[str, dict[str, str]],
) -> list[str]:
    """The rules for the pods of the suite's own gRPC servers."""
    grace = pod.get("terminationGracePeriodSeconds", _DEFAULT_TERMINATION_GRACE_SECONDS)
    problems = []
    for container in pod["containers"]:
        where = f"{name} container {container['name']}"
        problems += _probe_problems(where, container, service)
        try:
            pause = _pre_stop_seconds(container)
            drain = _drain_seconds(container, config_maps)
        except ValidationError as error:
            problems.append(f"{where}: {error}")
            continue
        # SIGKILL comes this long after the preStop hook starts, so the hook,
        # the drain and the closing after it must all fit before it.
        needed = pause + drain + _SHUTDOWN_MARGIN_SECONDS
        if grace <= needed:
            problems.append(
                f"{where}: terminationGracePeriodSeconds {grace} must exceed "
                f"preStop {pause:g}s + {_DRAIN_VARIABLE} {drain:g}s "
                f"+ {_SHUTDOWN_MARGIN_SECONDS:g}s to close"
            )
    return problems


def _probe_problems(where: str, container: dict[str, Any], service: str) -> list[str]:
    # The health service turns `service` NOT_SERVING when a drain starts, and
    # Services and the gateway send traffic to the port named grpc.
    grpc_port = next(
        (
            p["containerPort"]
            for p in container.get("ports", [])
            if p.get("name") == "grpc"
        ),
        None,
    )
    if grpc_port is None:
        return [f"{where}: no port named grpc"]
    problems = []
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container.get(probe, {}).get("grpc")
        if check is None:
            problems.append(f"{where}: {probe} must be a grpc probe")
            continue
        if check.get("port") != grpc_port:
            problems.append(f"{where}: {probe} must probe port {grpc_port} by number")
        if check.get("service") != service:
            problems.append(f"{where}: {probe} must name the service {service}")
    return problems


def _pre_stop_seconds(container: dict[str, Any]) -> float:
    """How long the preStop hook pauses: `sleep N`, or the native sleep action."""
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    if len(command) == 2 and Path(command[0]).name == "sleep":
        return _seconds("the preStop sleep", command[1])
    raise ValidationError("preStop must be a plain sleep, so its length is known")


def _drain_seconds(
    container: dict[str, Any], config_maps: dict[str, dict[str, str]]
) -> float:
    value = _environment_value(container, config_maps, _DRAIN_VARIABLE)
    if value is None:
        return _DEFAULT_DRAIN_SECONDS
    return _seconds(_DRAIN_VARIABLE, value)


def _seconds(what: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds):
        raise ValidationError(f"{what} is {value!r}, not a number of seconds")
    return seconds


def _environment_value(
    container: dict[str, Any], config_maps: dict[str, dict[str, str]], variable: str
) -> str | None:
    """`variable` as the container sees it, or None when it is unset.

    Kubernetes lets `env` win over `envFrom`, and a later entry over an earlier
    one. A Secret (`secretRef`) is not read: settings do not live there.
    """
    for env in reversed(container.get("env", [])):
        if env["name"] != variable:
            continue
        if "value" in env:
            return str(env["value"])
        ref = env.get("valueFrom", {}).get("configMapKeyRef")
        if ref is not None and ref["key"] in config_maps.get(ref["name"], {}):
            return config_maps[ref["name"]][ref["key"]]
        raise ValidationError(f"{variable} comes from where validate cannot read it")
    for source in reversed(container.get("envFrom", [])):
        ref = source.get("configMapRef")
        prefix = source.get("prefix", "")
        if ref is None or not variable.startswith(prefix):
            continue
        if ref["name"] not in config_maps:
            raise ValidationError(f"ConfigMap {ref['name']} is not in the manifests")
        data = config_maps[ref["name"]]
        if variable.removeprefix(prefix) in data:
            return data[variable.removeprefix(prefix)]
    return None


def _network_policy_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Every Service's pods are behind a NetworkPolicy that governs ingress."""
    ingress_selectors = [
        obj["spec"]["podSelector"]
        for obj in objects
        if obj["kind"] == "NetworkPolicy"
        and "Ingress" in obj["spec"].get("policyTypes", ["Ingress"])
    ]
    pod_labels = [
        obj["spec"]["template"]["metadata"].get("labels", {})
        for obj in objects
        if _pod_spec(obj) is not None
    ]
    problems = []
    for obj in objects:
        if obj["kind"] != "Service":
            continue
        selector = obj["spec"].get("selector")
        if not selector:
            continue  # no pods behind it (ExternalName, hand-made endpoints)
        # The pods it sends to; the selector alone if no workload matches.
        targets = [
            labels for labels in pod_labels if selector.items() <= labels.items()
        ] or [selector]
        for labels in targets:
            if not any(_selects(s, labels) for s in ingress_selectors):
                problems.append(
                    f"Service/{obj['metadata']['name']}: no NetworkPolicy governs "
                    f"ingress to its pods {labels}"
                )
    return problems


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector matches these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


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
