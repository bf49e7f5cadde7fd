"""The database, Redis and outage fixtures give each test its own clean resources."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import redis

from tests.harness.db_fixtures import (
    REQUIRE_SERVICES_ENV,
    TEST_DATABASE_PREFIX,
    FaultProxyFactory,
    check_postgres,
    check_redis,
    fresh_postgres_database,
    fresh_redis_prefix,
)
from tests.harness.fault_proxy import host_port

UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/postgres"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def _database_exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(admin_url) as admin:
        row = admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    return row is not None


def test_postgres_url_is_a_fresh_empty_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public'"
        ).fetchall()

    assert name is not None and name[0].startswith(TEST_DATABASE_PREFIX)
    assert tables == []


def test_fresh_database_is_dropped_even_with_connections_left_open(
    postgres_admin_url: str,
) -> None:
    with fresh_postgres_database(postgres_admin_url) as url:
        name = url.rsplit("/", 1)[1]
        leftover = psycopg.connect(url)
        existed = _database_exists(postgres_admin_url, name)

    try:
        assert existed
        assert not _database_exists(postgres_admin_url, name)
    finally:
        leftover.close()


def test_sqlite_url_is_a_new_file_in_the_test_directory(
    sqlite_url: str, tmp_path: Path
) -> None:
    path = Path(sqlite_url.removeprefix("sqlite:///"))

    assert path.parent == tmp_path
    assert not path.exists()


def test_database_url_is_the_dialect_its_id_names(
    database_url: str, request: pytest.FixtureRequest
) -> None:
    scheme = {"postgres": "postgresql://", "sqlite": "sqlite:///"}

    assert database_url.startswith(scheme[request.node.callspec.id])


def test_server_tests_are_marked_for_deselection(
    request: pytest.FixtureRequest, postgres_url: str, redis_prefix: str
) -> None:
    markers = {mark.name for mark in request.node.iter_markers()}

    assert {"postgres", "redis"} <= markers


def test_redis_prefix_is_unique_per_test(redis_url: str, redis_prefix: str) -> None:
    with fresh_redis_prefix(redis_url) as other:
        pass

    assert redis_prefix.startswith("test:") and redis_prefix.endswith(":")
    assert other != redis_prefix


def test_redis_prefix_keys_are_deleted_after_and_others_kept(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with fresh_redis_prefix(redis_url) as bystander:
        client.set(bystander + "keep", b"1")
        with fresh_redis_prefix(redis_url) as prefix:
            client.mset({f"{prefix}k{n}": n for n in range(1200)})
            client.hset(prefix + "hash", "f", "v")
        left = list(client.scan_iter(match=prefix + "*", count=10_000))
        kept = client.get(bystander + "keep")
    client.close()

    assert left == []
    assert kept == b"1"


@pytest.mark.parametrize(
    "check, url",
    [
        pytest.param(check_postgres, UNREACHABLE_POSTGRES, id="postgres"),
        pytest.param(check_redis, UNREACHABLE_REDIS, id="redis"),
    ],
)
def test_unreachable_server_skips_by_default(
    check, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REQUIRE_SERVICES_ENV, raising=False)

    with pytest.raises(pytest.skip.Exception, match="unreachable"):
        check(url)


@pytest.mark.parametrize(
    "check, url",
    [
        pytest.param(check_postgres, UNREACHABLE_POSTGRES, id="postgres"),
        pytest.param(check_redis, UNREACHABLE_REDIS, id="redis"),
    ],
)
def test_unreachable_server_fails_when_services_are_required(
    check, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE_SERVICES_ENV, "1")

    with pytest.raises(pytest.fail.Exception, match="required"):
        check(url)


async def test_fault_proxy_fixture_starts_working_proxies(
    fault_proxy: FaultProxyFactory, postgres_url: str
) -> None:
    proxy = await fault_proxy(*host_port(postgres_url))
    async with await psycopg.AsyncConnection.connect(
        proxy.url_for(postgres_url)
    ) as conn:
        cursor = await conn.execute("SELECT 41 + 1")
        answer = await cursor.fetchone()

    assert answer == (42,)
