"""Fixtures of the auth tests: a running auth service on each database dialect."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.auth.harness import AuthUnderTest, auth_settings, running_auth
from tests.harness.db_fixtures import fresh_postgres_database


@pytest.fixture
async def auth(database_url: str) -> AsyncIterator[AuthUnderTest]:
    async with running_auth(auth_settings(database_url)) as running:
        yield running


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("sqlite"),
    ],
)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One fresh database of each dialect, shared by a module's tests."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('auth') / 'auth.db'}"
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    with fresh_postgres_database(admin_url) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_auth(module_database_url: str) -> AsyncIterator[AuthUnderTest]:
    """One auth service for a whole module whose tests do not disturb each other."""
    async with running_auth(auth_settings(module_database_url)) as running:
        yield running
