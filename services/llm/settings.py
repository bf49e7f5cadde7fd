"""Settings of the llm service, read once from `EMPIRE_LLM_*` variables."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Env, ServerSettings, database_url, load_server_settings

TIE_BREAKERS = ("none", "latency", "cost")


@dataclass(frozen=True)
class RouterPolicy:
    """How the router retries, backs off, breaks circuits and orders providers."""

    max_attempts: int = 5  # the retry budget of one request, over all providers
    retries_per_provider: int = 1  # extra tries of a provider on transient errors
    backoff_base_seconds: float = 0.1
    backoff_max_seconds: float = 2.0
    max_retry_after_seconds: float = 10.0
    request_deadline_seconds: float = 120.0  # the total deadline of one request
    breaker_consecutive_failures: int = 5
    breaker_failure_rate: float = 0.5
    breaker_min_attempts: int = 10
    breaker_window_seconds: float = 60.0
    breaker_cooldown_seconds: float = 5.0
    breaker_cooldown_max_seconds: float = 60.0
    tie_breaker: str = "none"
    default_max_tokens: int = 1024
    max_prompt_chars: int = 1_000_000


@dataclass(frozen=True)
class LlmSettings:
    server: ServerSettings
    database_url: str  # EMPIRE_LLM_DATABASE_URL
    policy: RouterPolicy
    health_check_interval_seconds: float  # 0 turns active checks off
    registry_refresh_seconds: float  # picks up other replicas' provider edits
    vault_target: str | None  # EMPIRE_LLM_VAULT_TARGET, e.g. "127.0.0.1:50052"
    cache_target: str | None  # EMPIRE_LLM_CACHE_TARGET, e.g. "127.0.0.1:50053"
    cache_route: str  # the cache service route completions are stored under
    auth_target: str  # where the service API key is exchanged for tokens
    service_api_key: str | None  # exchanged with auth for a token to vault/cache
    key_cache_seconds: float  # how long an API key read from vault is reused
    dependency_timeout_seconds: float  # deadline of one vault or cache call


def load_settings(env: Env | None = None) -> LlmSettings:
    env = env or Env()
    return LlmSettings(
        server=load_server_settings("llm", env),
        database_url=database_url(env, "llm"),
        policy=load_policy(env),
        health_check_interval_seconds=env.float(
            "LLM_HEALTH_CHECK_INTERVAL_SECONDS", 30.0, minimum=0.0
        ),
        registry_refresh_seconds=env.float(
            "LLM_REGISTRY_REFRESH_SECONDS", 5.0, minimum=0.1
        ),
        vault_target=env.optional_str("LLM_VAULT_TARGET"),
        cache_target=env.optional_str("LLM_CACHE_TARGET"),
        cache_route=env.str("LLM_CACHE_ROUTE", "llm-completions"),
        auth_target=env.str("LLM_AUTH_TARGET", "127.0.0.1:50051"),
        service_api_key=env.optional_str("LLM_SERVICE_API_KEY"),
        key_cache_seconds=env.float("LLM_KEY_CACHE_SECONDS", 300.0, minimum=0.0),
        dependency_timeout_seconds=env.float(
            "LLM_DEPENDENCY_TIMEOUT_SECONDS", 0.5, minimum=0.01, maximum=30.0
        ),
    )


def load_policy(env: Env) -> RouterPolicy:
    return RouterPolicy(
        max_attempts=env.int("LLM_MAX_ATTEMPTS", 5, minimum=1, maximum=50),
        retries_per_provider=env.int(
            "LLM_RETRIES_PER_PROVIDER", 1, minimum=0, maximum=10
        ),
        backoff_base_seconds=env.float(
            "LLM_BACKOFF_BASE_SECONDS", 0.1, minimum=0.0, maximum=60.0
        ),
        backoff_max_seconds=env.float(
            "LLM_BACKOFF_MAX_SECONDS", 2.0, minimum=0.0, maximum=300.0
        ),
        max_retry_after_seconds=env.float(
            "LLM_MAX_RETRY_AFTER_SECONDS", 10.0, minimum=0.0, maximum=600.0
        ),
        request_deadline_seconds=env.float(
            "LLM_REQUEST_DEADLINE_SECONDS", 120.0, minimum=0.1, maximum=3600.0
        ),
        breaker_consecutive_failures=env.int(
            "LLM_BREAKER_CONSECUTIVE_FAILURES", 5, minimum=1
        ),
        breaker_failure_rate=env.float(
            "LLM_BREAKER_FAILURE_RATE", 0.5, minimum=0.01, maximum=1.0
        ),
        breaker_min_attempts=env.int("LLM_BREAKER_MIN_ATTEMPTS", 10, minimum=1),
        breaker_window_seconds=env.float(
            "LLM_BREAKER_WINDOW_SECONDS", 60.0, minimum=1.0
        ),
        breaker_cooldown_seconds=env.float(
            "LLM_BREAKER_COOLDOWN_SECONDS", 5.0, minimum=0.0
        ),
        breaker_cooldown_max_seconds=env.float(
            "LLM_BREAKER_COOLDOWN_MAX_SECONDS", 60.0, minimum=0.0
        ),
        tie_breaker=env.choice("LLM_TIE_BREAKER", "none", TIE_BREAKERS),
        default_max_tokens=env.int(
            "LLM_DEFAULT_MAX_TOKENS", 1024, minimum=1, maximum=1_000_000
        ),
        max_prompt_chars=env.int(
            "LLM_MAX_PROMPT_CHARS", 1_000_000, minimum=1, maximum=100_000_000
        ),
    )
