"""The auth service's settings, read once from `EMPIRE_AUTH_*` variables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from services.auth.api_key_format import parse_api_key
from shared.config import (
    Env,
    ServerSettings,
    SettingsError,
    database_timeout_seconds,
    database_url,
    load_server_settings,
)
from shared.master_key import read_accepted_master_keys, read_master_key

ALGORITHMS = ("EdDSA", "ES256", "RS256")
ADMIN_ROLE = "admin"
ALL_SCOPES = "*"
_ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class AuthSettings:
    server: ServerSettings
    database_url: str
    database_timeout_seconds: float
    # The key that encrypts signing keys and keys the API-key and refresh-token
    # hashes (EMPIRE_AUTH_MASTER_KEY, or a file named by
    # EMPIRE_AUTH_MASTER_KEY_FILE). None means a development start that keeps
    # a generated one in `dev_master_key_file`.
    master_key: bytes | None = field(repr=False)
    # Old keys (or, during a two-step rollout, the next one) whose stored
    # seals and hashes still count; nothing new is made with them.
    accepted_master_keys: tuple[bytes, ...] = field(repr=False)
    dev_master_key_file: Path
    development: bool
    bootstrap_api_key: str | None = field(repr=False)
    default_token_ttl_seconds: int
    min_token_ttl_seconds: int
    max_token_ttl_seconds: int
    exchange_token_ttl_seconds: int
    refresh_token_ttl_seconds: int
    refresh_family_max_age_seconds: int
    refresh_reuse_grace_seconds: float
    key_algorithm: str
    key_rotation_interval_seconds: int
    jwks_max_age_seconds: int
    sync_interval_seconds: float
    allowed_audiences: frozenset[str]
    roles: dict[str, frozenset[str]]

    @property
    def issuer(self) -> str:
        return self.server.token_issuer

    @property
    def audience(self) -> str:
        return self.server.token_audience

    @property
    def leeway_seconds(self) -> float:
        return self.server.clock_leeway_seconds


def load_settings(env: Env | None = None) -> AuthSettings:
    env = env or Env()
    server = load_server_settings("auth", env)
    min_ttl = env.int("AUTH_MIN_TOKEN_TTL_SECONDS", 30, minimum=1, maximum=86400)
    max_ttl = env.int("AUTH_MAX_TOKEN_TTL_SECONDS", 86400, minimum=1, maximum=604800)
    default_ttl = env.int("AUTH_TOKEN_TTL_SECONDS", 900, minimum=1, maximum=604800)
    if not min_ttl <= default_ttl <= max_ttl:
        raise SettingsError(
            "EMPIRE_AUTH_TOKEN_TTL_SECONDS: must lie between "
            "EMPIRE_AUTH_MIN_TOKEN_TTL_SECONDS and EMPIRE_AUTH_MAX_TOKEN_TTL_SECONDS"
        )
    exchange_ttl = env.int("AUTH_EXCHANGE_TOKEN_TTL_SECONDS", 900, minimum=1)
    if not min_ttl <= exchange_ttl <= max_ttl:
        raise SettingsError(
            "EMPIRE_AUTH_EXCHANGE_TOKEN_TTL_SECONDS: must lie between the min and "
            "max token TTL"
        )
    jwks_max_age = env.int("AUTH_JWKS_MAX_AGE_SECONDS", 300, minimum=0, maximum=86400)
    sync_interval = env.float(
        "AUTH_SYNC_INTERVAL_SECONDS", 5.0, minimum=0.05, maximum=3600.0
    )
    if jwks_max_age and sync_interval >= jwks_max_age:
        # A replica learns of a key another replica published only when it
        # syncs; it must do so well before that key may start signing.
        raise SettingsError(
            "EMPIRE_AUTH_SYNC_INTERVAL_SECONDS: must be shorter than "
            "EMPIRE_AUTH_JWKS_MAX_AGE_SECONDS"
        )
    development = env.bool("AUTH_DEVELOPMENT", True)
    master_key = read_master_key(env, "auth")
    if master_key is None and not development:
        raise SettingsError(
            "EMPIRE_AUTH_MASTER_KEY: required (or EMPIRE_AUTH_MASTER_KEY_FILE) when "
            "EMPIRE_AUTH_DEVELOPMENT is false"
        )
    return AuthSettings(
        server=server,
        database_url=database_url(env, "auth"),
        database_timeout_seconds=database_timeout_seconds(env, "auth"),
        master_key=master_key,
        accepted_master_keys=read_accepted_master_keys(env, "auth"),
        dev_master_key_file=env.path("AUTH_DEV_MASTER_KEY_FILE")
        or Path("var/auth-master.key"),
        development=development,
        bootstrap_api_key=_bootstrap_api_key(env),
        default_token_ttl_seconds=default_ttl,
        min_token_ttl_seconds=min_ttl,
        max_token_ttl_seconds=max_ttl,
        exchange_token_ttl_seconds=exchange_ttl,
        refresh_token_ttl_seconds=env.int(
            "AUTH_REFRESH_TOKEN_TTL_SECONDS", 14 * 86400, minimum=60
        ),
        refresh_family_max_age_seconds=env.int(
            "AUTH_REFRESH_FAMILY_MAX_AGE_SECONDS", 90 * 86400, minimum=60
        ),
        refresh_reuse_grace_seconds=env.float(
            "AUTH_REFRESH_REUSE_GRACE_SECONDS", 10.0, minimum=0.0, maximum=300.0
        ),
        key_algorithm=env.choice("AUTH_KEY_ALGORITHM", "EdDSA", ALGORITHMS),
        key_rotation_interval_seconds=env.int(
            "AUTH_KEY_ROTATION_INTERVAL_SECONDS", 7 * 86400, minimum=0
        ),
        jwks_max_age_seconds=jwks_max_age,
        sync_interval_seconds=sync_interval,
        allowed_audiences=frozenset(
            {server.token_audience, *_split(env.str("AUTH_AUDIENCES", ""), ",")}
        ),
        roles=parse_roles(env.str("AUTH_ROLES", "")),
    )


def parse_roles(text: str) -> dict[str, frozenset[str]]:
    """Roles from `reader=secrets:read tokens:verify;writer=secrets:write`.

    `admin` always exists and holds every scope; it cannot be redefined.
    """
    roles: dict[str, frozenset[str]] = {ADMIN_ROLE: frozenset({ALL_SCOPES})}
    for entry in _split(text, ";"):
        name, separator, scopes = entry.partition("=")
        name = name.strip()
        if not separator or not _ROLE_NAME.match(name) or name == ADMIN_ROLE:
            raise SettingsError(
                "EMPIRE_AUTH_ROLES: expected 'role=scope scope;role=scope', "
                f"with lowercase role names other than {ADMIN_ROLE!r}"
            )
        roles[name] = frozenset(scopes.split())
    return roles


def _split(text: str, separator: str) -> list[str]:
    return [part.strip() for part in text.split(separator) if part.strip()]


def _bootstrap_api_key(env: Env) -> str | None:
    key = env.optional_str("AUTH_BOOTSTRAP_API_KEY")
    if key is not None and parse_api_key(key) is None:
        raise SettingsError(
            "EMPIRE_AUTH_BOOTSTRAP_API_KEY: expected an API key 'esk_<id>_<body>' "
            "with a valid checksum (make one with python -m services.auth.new_api_key)"
        )
    return key
