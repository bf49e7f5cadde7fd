"""Route configs loaded from a JSON file at start (a ConfigMap in Kubernetes).

The file holds `{"routes": [RouteConfig, ...]}` in the proto's JSON form; a
policy may be written short (`"aggressive"`) or in full
(`"CACHE_POLICY_AGGRESSIVE"`).
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format

from empire.cache.v1 import cache_service_pb2 as pb
from services.cache.routes import Route, route_from_proto
from shared.config import SettingsError
from shared.errors import InvalidArgument

VARIABLE = "EMPIRE_CACHE_CONFIG_FILE"


def load_config_file(path: Path) -> list[Route]:
    """Every route of the file, validated; SettingsError on the first fault."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SettingsError(
            f"{VARIABLE}: cannot read {path}: {error.strerror}"
        ) from None
    except ValueError as error:
        raise SettingsError(f"{VARIABLE}: {path} is not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("routes"), list):
        raise SettingsError(f'{VARIABLE}: {path} must hold {{"routes": [...]}}')
    routes = [
        _parse_route(item, index, path) for index, item in enumerate(document["routes"])
    ]
    ids = [route.route_id for route in routes]
    if len(set(ids)) != len(ids):
        raise SettingsError(f"{VARIABLE}: {path} names a route id twice")
    return routes


def _parse_route(item: object, index: int, path: Path) -> Route:
    where = f"{VARIABLE}: {path} routes[{index}]"
    if not isinstance(item, dict):
        raise SettingsError(f"{where}: must be an object")
    item = dict(item)
    policy = item.get("policy")
    if isinstance(policy, str) and not policy.upper().startswith("CACHE_POLICY_"):
        item["policy"] = "CACHE_POLICY_" + policy.upper()
    config = pb.RouteConfig()
    try:
        json_format.ParseDict(item, config)
    except json_format.ParseError as error:
        raise SettingsError(f"{where}: {error}") from None
    config.source = pb.CONFIG_SOURCE_FILE
    try:
        return route_from_proto(config, prefix="")
    except InvalidArgument as error:
        raise SettingsError(f"{where}: {error.message}") from None
