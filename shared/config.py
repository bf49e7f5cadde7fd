"""Typed, validated reading of `EMPIRE_*` environment variables.

Each service declares a frozen dataclass of settings and fills it through an
`Env` reader; the first bad value raises `SettingsError` naming the variable,
and the process stops before it serves anything.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

PREFIX = "EMPIRE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# Env's readers are named after the types they return, which shadows those
# names inside the class body; these aliases keep its annotations unambiguous.
_Str: TypeAlias = str
_Int: TypeAlias = int
_Float: TypeAlias = float
_Bool: TypeAlias = bool


class SettingsError(ValueError):
    """A variable is malformed; the message names it and says what it expects."""


class Env:
    """Reads typed values from an environment mapping (os.environ by default)."""

    def __init__(self, environ: Mapping[_Str, _Str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def raw(self, name: _Str) -> _Str | None:
        value = self._environ.get(PREFIX + name)
        return None if value is None or value.strip() == "" else value.strip()

    def str(self, name: _Str, default: _Str) -> _Str:
        value = self.raw(name)
        return default if value is None else value

    def optional_str(self, name: _Str) -> _Str | None:
        return self.raw(name)

    def int(
        self,
        name: _Str,
        default: _Int,
        *,
        minimum: _Int | None = None,
        maximum: _Int | None = None,
    ) -> _Int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise self._error(name, value, "an integer") from None
        self._check_range(name, number, minimum, maximum)
        return number

    def float(
        self,
        name: _Str,
        default: _Float,
        *,
        minimum: _Float | None = None,
        maximum: _Float | None = None,
    ) -> _Float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise self._error(name, value, "a number") from None
        if not math.isfinite(number):
            # NaN passes every range check (all its comparisons are false): a
            # NaN leeway would let expired tokens through.
            raise self._error(name, value, "a finite number")
        self._check_range(name, number, minimum, maximum)
        return number

    def bool(self, name: _Str, default: _Bool) -> _Bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise self._error(name, value, "true or false")

    def choice(self, name: _Str, default: _Str, choices: tuple[_Str, ...]) -> _Str:
        value = self.str(name, default)
        if value not in choices:
            raise self._error(name, value, "one of " + ", ".join(choices))
        return value

    def port(self, name: _Str, default: _Int) -> _Int:
        return self.int(name, default, minimum=0, maximum=65535)

    def path(self, name: _Str) -> Path | None:
        value = self.raw(name)
        return None if value is None else Path(value)

    def _check_range(
        self, name: _Str, number: _Float, minimum: _Float | None, maximum: _Float | None
    ) -> None:
        if minimum is not None and number < minimum:
            raise SettingsError(f"{PREFIX}{name}: must be at least {minimum}")
        if maximum is not None and number > maximum:
            raise SettingsError(f"{PREFIX}{name}: must be at most {maximum}")

    def _error(self, name: _Str, value: _Str, expected: _Str) -> SettingsError:
        # The value is echoed only when short: a misplaced secret must not be
        # printed whole.
        shown = repr(value) if len(value) <= 24 else "a value"
        return SettingsError(f"{PREFIX}{name}: expected {expected}, got {shown}")


@dataclass(frozen=True)
class ServerSettings:
    """What every service needs to serve: where, how to shut down, whom to trust."""

    service: str
    host: str
    port: int
    http_port: int
    shutdown_grace_seconds: float
    log_level: str
    auth_enabled: bool
    jwks_url: str
    token_issuer: str
    token_audience: str
    jwks_refetch_interval_seconds: float
    jwks_max_age_seconds: float
    clock_leeway_seconds: float
    revocations_url: str
    revocation_poll_seconds: float


DEFAULT_PORTS = {"auth": 50051, "vault": 50052, "cache": 50053, "llm": 50054}
DEFAULT_HTTP_PORTS = {"auth": 8051, "vault": 8052, "cache": 8053, "llm": 8054}


def load_server_settings(service: str, env: Env | None = None) -> ServerSettings:
    """Server settings for `service`; `EMPIRE_<SVC>_PORT` overrides the port."""
    env = env or Env()
    key = service.upper()
    jwks_url = env.str(
        "JWKS_URL",
        f"http://127.0.0.1:{DEFAULT_HTTP_PORTS['auth']}/.well-known/jwks.json",
    )
    return ServerSettings(
        service=service,
        host=env.str("HOST", "127.0.0.1"),
        port=env.port(f"{key}_PORT", DEFAULT_PORTS[service]),
        http_port=env.port(f"{key}_HTTP_PORT", DEFAULT_HTTP_PORTS[service]),
        shutdown_grace_seconds=env.float(
            "SHUTDOWN_GRACE_SECONDS", 5.0, minimum=0.0, maximum=300.0
        ),
        log_level=env.choice(
            "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")
        ),
        auth_enabled=env.bool("AUTH_ENABLED", True),
        jwks_url=jwks_url,
        token_issuer=env.str("TOKEN_ISSUER", "https://auth.empire-security.local"),
        token_audience=env.str("TOKEN_AUDIENCE", "empire-security"),
        jwks_refetch_interval_seconds=env.float(
            "JWKS_REFETCH_INTERVAL_SECONDS", 10.0, minimum=0.0
        ),
        jwks_max_age_seconds=env.float("JWKS_MAX_AGE_SECONDS", 300.0, minimum=1.0),
        clock_leeway_seconds=env.float(
            "CLOCK_LEEWAY_SECONDS", 30.0, minimum=0.0, maximum=300.0
        ),
        # Auth publishes its revocations beside its JWKS.
        revocations_url=env.str(
            "REVOCATIONS_URL",
            urllib.parse.urljoin(jwks_url, "/.well-known/revoked-tokens.json"),
        ),
        # 0 turns the poll off: revoked tokens then pass until they expire.
        revocation_poll_seconds=env.float(
            "REVOCATION_POLL_SECONDS", 5.0, minimum=0.0, maximum=3600.0
        ),
    )


def database_url(env: Env, service: str) -> str:
    """`EMPIRE_<SVC>_DATABASE_URL`, by default the embedded `sqlite:///var/<svc>.db`."""
    name = f"{service.upper()}_DATABASE_URL"
    url = env.str(name, f"sqlite:///var/{service}.db")
    if not url.startswith(("postgresql://", "postgres://", "sqlite://")):
        # Checked here, not when the database opens, so the error names the
        # variable; the value itself is not shown, as it may hold a password.
        raise SettingsError(
            f"{PREFIX}{name}: expected a postgresql:// or sqlite:// URL"
        )
    return url


def database_timeout_seconds(env: Env, service: str) -> float:
    """`EMPIRE_<SVC>_DATABASE_TIMEOUT_SECONDS`: how long one database call may wait."""
    return env.float(
        f"{service.upper()}_DATABASE_TIMEOUT_SECONDS", 3.0, minimum=0.1, maximum=60.0
    )
