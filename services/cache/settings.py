"""Settings of the cache service, read once from `EMPIRE_CACHE_*` variables."""

from __future__ import annotations

import dataclasses
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.cache.config_file import load_config_file
from services.cache.routes import Route
from shared.config import (
    Env,
    ServerSettings,
    SettingsError,
    database_url,
    load_server_settings,
)

MIB = 1024 * 1024
_REPLICA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class CacheSettings:
    server: ServerSettings
    # EMPIRE_CACHE_DATABASE_URL: where route configs persist.
    database_url: str
    # EMPIRE_CACHE_REDIS_URL: the shared tier; unset runs the in-process tier alone.
    redis_url: str | None
    # EMPIRE_CACHE_REDIS_PREFIX: namespace of every Redis key and channel.
    redis_prefix: str
    # EMPIRE_CACHE_REDIS_TIMEOUT_SECONDS: a Redis call slower than this counts
    # as an outage, so a stalled Redis cannot stall lookups.
    redis_timeout_seconds: float
    # EMPIRE_CACHE_L1_MAX_BYTES: bound of the in-process tier (keys and values).
    l1_max_bytes: int
    # EMPIRE_CACHE_L1_DISCONNECTED_MAX_AGE_SECONDS: while the invalidation
    # subscription is lost, an in-process entry is served at most this long
    # after the subscription last answered a ping (or after its local store,
    # if later), and at least until the loss is noticed.
    l1_disconnected_max_age_seconds: float
    # EMPIRE_CACHE_LEASE_TIMEOUT_SECONDS: how long a fill lease blocks others.
    lease_timeout_seconds: float
    # EMPIRE_CACHE_INVALIDATION_ACK_TIMEOUT_SECONDS: how long Invalidate waits
    # for the other replicas to confirm they dropped their in-process copies.
    invalidation_ack_timeout_seconds: float
    # EMPIRE_CACHE_JANITOR_INTERVAL_SECONDS: how often one replica prunes
    # expired entries from the shared route and tag indexes.
    janitor_interval_seconds: float
    # EMPIRE_CACHE_MAX_KEY_BYTES / EMPIRE_CACHE_MAX_VALUE_BYTES: request limits.
    max_key_bytes: int
    max_value_bytes: int
    # EMPIRE_CACHE_CONFIG_FILE: route configs (JSON) loaded at start.
    config_file: Path | None
    # Routes parsed from the config file, applied over the store at start.
    file_routes: tuple[Route, ...]
    # EMPIRE_CACHE_REPLICA_ID: names this replica in stats and lease tokens;
    # default "cache-" and random hex. Must differ between replicas.
    replica_id: str


def load_settings(env: Env | None = None) -> CacheSettings:
    env = env or Env()
    settings = CacheSettings(
        server=load_server_settings("cache", env),
        database_url=database_url(env, "cache"),
        redis_url=env.optional_str("CACHE_REDIS_URL"),
        redis_prefix=env.str("CACHE_REDIS_PREFIX", "empire:cache:"),
        redis_timeout_seconds=env.float(
            "CACHE_REDIS_TIMEOUT_SECONDS", 0.5, minimum=0.01, maximum=30.0
        ),
        l1_max_bytes=env.int(
            "CACHE_L1_MAX_BYTES", 64 * MIB, minimum=64 * 1024, maximum=1 << 40
        ),
        l1_disconnected_max_age_seconds=env.float(
            "CACHE_L1_DISCONNECTED_MAX_AGE_SECONDS", 5.0, minimum=0.0, maximum=3600.0
        ),
        lease_timeout_seconds=env.float(
            "CACHE_LEASE_TIMEOUT_SECONDS", 5.0, minimum=0.05, maximum=300.0
        ),
        invalidation_ack_timeout_seconds=env.float(
            "CACHE_INVALIDATION_ACK_TIMEOUT_SECONDS", 1.0, minimum=0.0, maximum=30.0
        ),
        janitor_interval_seconds=env.float(
            "CACHE_JANITOR_INTERVAL_SECONDS", 60.0, minimum=1.0, maximum=86400.0
        ),
        max_key_bytes=env.int("CACHE_MAX_KEY_BYTES", 1024, minimum=16, maximum=65536),
        max_value_bytes=env.int(
            "CACHE_MAX_VALUE_BYTES", MIB, minimum=1024, maximum=64 * MIB
        ),
        config_file=env.path("CACHE_CONFIG_FILE"),
        file_routes=(),
        replica_id=env.str("CACHE_REPLICA_ID", "cache-" + secrets.token_hex(4)),
    )
    if not _REPLICA_ID.fullmatch(settings.replica_id):
        raise SettingsError(
            "EMPIRE_CACHE_REPLICA_ID: expected 1 to 64 of A-Z, a-z, 0-9, '_', '-'"
        )
    if settings.redis_url and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise SettingsError(
            "EMPIRE_CACHE_REDIS_URL: expected a redis://, rediss:// or unix:// URL"
        )
    if settings.max_value_bytes > settings.l1_max_bytes:
        raise SettingsError(
            "EMPIRE_CACHE_MAX_VALUE_BYTES: must not exceed EMPIRE_CACHE_L1_MAX_BYTES"
        )
    if settings.config_file is not None:
        routes = tuple(load_config_file(settings.config_file))
        settings = dataclasses.replace(settings, file_routes=routes)
    return settings
