"""Fixtures shared by every test; the database, Redis and fault-proxy ones live in
`tests/harness/db_fixtures.py`."""

from __future__ import annotations

import importlib.util

import pytest

from tests.harness.tokens import LocalIssuer

# TODO: drop the guard once tests/harness/db_fixtures.py has landed.
pytest_plugins = [
    name
    for name in ["tests.harness.db_fixtures"]
    if importlib.util.find_spec(name) is not None
]


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer()
