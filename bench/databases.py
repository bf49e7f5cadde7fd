"""The PostgreSQL server the tests use, for the benches' own fresh databases."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg

from tests.harness.db_fixtures import DEFAULT_DATABASE_URL, fresh_postgres_database


def postgres_admin_url() -> str | None:
    """The server's admin URL if it answers, else None (its rows are skipped)."""
    admin_url = os.environ.get("EMPIRE_TEST_DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        with psycopg.connect(admin_url, connect_timeout=3):
            return admin_url
    except psycopg.Error:
        return None


@contextlib.contextmanager
def fresh_postgres(bench: str) -> Iterator[str | None]:
    """A new database, dropped afterwards; None (said once) without a server."""
    admin_url = postgres_admin_url()
    if admin_url is None:
        print(f"-- {bench}: PostgreSQL unreachable; its rows are skipped", flush=True)
        yield None
        return
    with fresh_postgres_database(admin_url) as url:
        yield url
