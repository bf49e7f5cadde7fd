"""Fixtures that give a test its own PostgreSQL database, Redis key prefix and
fault proxies, on the servers named by `EMPIRE_TEST_DATABASE_URL` and
`EMPIRE_TEST_REDIS_URL`.

When a server is unreachable the test is skipped, or fails when
`EMPIRE_TEST_REQUIRE_SERVICES=1` (CI), so a missing server never passes unseen.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from tests.harness.fault_proxy import FaultProxy

DATABASE_URL_ENV = "EMPIRE_TEST_DATABASE_URL"
REDIS_URL_ENV = "EMPIRE_TEST_REDIS_URL"
REQUIRE_SERVICES_ENV = "EMPIRE_TEST_REQUIRE_SERVICES"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TEST_DATABASE_PREFIX = "empire_test_"

_CONNECT_TIMEOUT_S = 3

FaultProxyFactory = Callable[[str, int], Awaitable[FaultProxy]]


def unreachable(service: str, why: str) -> None:
    """Skip the test, or fail it when the environment says servers are required."""
    reason = f"{service} unreachable ({why}); set {REQUIRE_SERVICES_ENV}=1 to fail"
    if os.environ.get(REQUIRE_SERVICES_ENV) == "1":
        pytest.fail(f"{service} is required but unreachable ({why})", pytrace=False)
    pytest.skip(reason)


def check_postgres(admin_url: str) -> None:
    """Return if `admin_url` answers, else skip or fail the test."""
    try:
        with psycopg.connect(admin_url, connect_timeout=_CONNECT_TIMEOUT_S):
            pass
    except psycopg.Error as exc:
        unreachable("PostgreSQL", _first_line(exc))


def check_redis(url: str) -> None:
    """Return if `url` answers PING, else skip or fail the test."""
    client = redis.Redis.from_url(url, socket_connect_timeout=_CONNECT_TIMEOUT_S)
    try:
        client.ping()
    except redis.RedisError as exc:
        unreachable("Redis", _first_line(exc))
    finally:
        client.close()


def _first_line(exc: Exception) -> str:
    # Driver messages name the host and port, never the password.
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` on the same server."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """Create `empire_test_<random>`, yield its URL, then drop it, ending any
    connection the test left open."""
    name = TEST_DATABASE_PREFIX + secrets.token_hex(6)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_redis_prefix(url: str) -> Iterator[str]:
    """Yield `test:<random>:`, then delete every key under it."""
    prefix = f"test:{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url, socket_connect_timeout=_CONNECT_TIMEOUT_S)
        try:
            # A large COUNT: the shared server may hold many other keys.
            keys = list(client.scan_iter(match=prefix + "*", count=10_000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a server, so `-m "not postgres and not redis"`
    runs the embedded-only part of the suite."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"postgres_url", "postgres_admin_url"}:
            item.add_marker(pytest.mark.postgres)
        if fixtures & {"redis_url", "redis_prefix"}:
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The maintenance database tests create their own databases from."""
    url = os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
    check_postgres(url)
    return url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    with fresh_postgres_database(postgres_admin_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(
    params=[
        pytest.param("postgres_url", id="postgres", marks=pytest.mark.postgres),
        pytest.param("sqlite_url", id="sqlite"),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database of each dialect in turn."""
    return str(request.getfixturevalue(request.param))


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL
    check_redis(url)
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    with fresh_redis_prefix(redis_url) as prefix:
        yield prefix


@pytest.fixture
def fault_proxy() -> Iterator[FaultProxyFactory]:
    """A factory: `proxy = await fault_proxy(host, port)`; all closed after."""
    proxies: list[FaultProxy] = []

    async def start(upstream_host: str, upstream_port: int) -> FaultProxy:
        proxy = FaultProxy(upstream_host, upstream_port).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()
