"""One running suite for every end-to-end test: four services on PostgreSQL and
Redis, a fake OpenAI provider, and the real Envoy gateway in front."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.auth.api_key_format import generate_api_key
from tests.e2e.calls import rest
from tests.e2e.stack import BackgroundLoop, Gateway, Stack, new_master_key
from tests.harness.db_fixtures import (
    DATABASE_URL_ENV,
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    REDIS_URL_ENV,
    check_postgres,
    check_redis,
    fresh_postgres_database,
    fresh_redis_prefix,
)
from tests.harness.fake_providers import FakeProvider

# Short enough that a rotation test waits seconds, not minutes: auth publishes
# a key this long before signing with it, and the gateway caches the key set
# for half of it (render_envoy's rule: never longer than auth's lead).
AUTH_KEY_LEAD_SECONDS = 2
GATEWAY_JWKS_CACHE_SECONDS = 1

LLM_SERVICE_SCOPES = ["secrets:read:llm/", "cache:use", "cache:read"]


@dataclass
class Suite:
    stack: Stack
    gateway: Gateway
    bootstrap_api_key: str
    admin_token: str
    provider: FakeProvider
    loop: BackgroundLoop

    @property
    def url(self) -> str:
        return self.gateway.base_url

    def exchange(self, scopes: list[str] | None = None) -> str:
        """A fresh access token for the bootstrap key, over REST."""
        answer = rest(
            self.url,
            "POST",
            "/api/empire-security/api-keys:exchange",
            {"api_key": self.bootstrap_api_key, "scopes": scopes or []},
        )
        assert answer.status == 200, answer.body
        return str(answer.body["access_token"])


@pytest.fixture(scope="package")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    admin_url = os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
    redis_url = os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL
    check_postgres(admin_url)
    check_redis(redis_url)
    workdir = tmp_path_factory.mktemp("e2e")

    with ExitStack() as resources:
        databases = {
            name: resources.enter_context(fresh_postgres_database(admin_url))
            for name in ("auth", "vault", "cache", "llm")
        }
        redis_prefix = resources.enter_context(fresh_redis_prefix(redis_url))
        loop = BackgroundLoop()
        resources.callback(loop.close)
        provider = loop.run(FakeProvider("openai", chunk_delay=0.01).start())
        resources.callback(lambda: loop.run(provider.close()))

        stack = _stack(workdir)
        resources.callback(stack.stop)
        bootstrap = generate_api_key().secret
        auth = stack.add_service(
            "auth",
            {
                "EMPIRE_AUTH_DATABASE_URL": databases["auth"],
                "EMPIRE_AUTH_MASTER_KEY": new_master_key(),
                "EMPIRE_AUTH_DEVELOPMENT": "false",
                "EMPIRE_AUTH_BOOTSTRAP_API_KEY": bootstrap,
                "EMPIRE_AUTH_JWKS_MAX_AGE_SECONDS": str(AUTH_KEY_LEAD_SECONDS),
                "EMPIRE_AUTH_SYNC_INTERVAL_SECONDS": "0.5",
                "EMPIRE_AUTH_KEY_ROTATION_INTERVAL_SECONDS": "0",
            },
        )
        stack.common_env["EMPIRE_JWKS_URL"] = (
            f"http://127.0.0.1:{auth.http_port}/.well-known/jwks.json"
        )
        stack.add_service(
            "vault",
            {
                "EMPIRE_VAULT_DATABASE_URL": databases["vault"],
                "EMPIRE_VAULT_MASTER_KEY": new_master_key(),
            },
        )
        stack.add_service(
            "cache",
            {
                "EMPIRE_CACHE_DATABASE_URL": databases["cache"],
                "EMPIRE_CACHE_REDIS_URL": redis_url,
                "EMPIRE_CACHE_REDIS_PREFIX": redis_prefix,
            },
        )
        llm = stack.add_service("llm", {"EMPIRE_LLM_DATABASE_URL": databases["llm"]})
        stack.start_services("auth", "vault", "cache")

        gateway = stack.start_gateway(
            stack.gateway_config(jwks_cache_seconds=GATEWAY_JWKS_CACHE_SECONDS)
        )
        gateway.wait_until_ready(("auth", "vault", "cache"))
        suite = Suite(stack, gateway, bootstrap, "", provider, loop)
        suite.admin_token = suite.exchange()

        # llm calls vault and cache as itself: an operator gives it an API key
        # of its own, as the README's Operations section describes.
        llm.env.update(
            {
                "EMPIRE_LLM_SERVICE_API_KEY": _create_api_key(suite, "llm"),
                "EMPIRE_LLM_AUTH_TARGET": stack.services["auth"].target,
                "EMPIRE_LLM_VAULT_TARGET": stack.services["vault"].target,
                "EMPIRE_LLM_CACHE_TARGET": stack.services["cache"].target,
            }
        )
        stack.start_services("llm")
        gateway.wait_until_ready(("auth", "vault", "cache", "llm"))
        yield suite


def _stack(workdir: Path) -> Stack:
    return Stack(
        workdir=workdir,
        common_env={
            "EMPIRE_HOST": "127.0.0.1",
            "EMPIRE_LOG_LEVEL": "INFO",
            "EMPIRE_SHUTDOWN_GRACE_SECONDS": "1",
            "EMPIRE_JWKS_REFETCH_INTERVAL_SECONDS": "0.5",
        },
    )


def _create_api_key(suite: Suite, subject: str) -> str:
    answer = rest(
        suite.url,
        "POST",
        "/api/empire-security/api-keys",
        {"display_name": subject, "subject": subject, "scopes": LLM_SERVICE_SCOPES},
        token=suite.admin_token,
    )
    assert answer.status == 200, answer.body
    return str(answer.body["secret"])
