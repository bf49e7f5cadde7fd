"""Fixtures shared by every test; the database, Redis and fault-proxy ones live in
`tests/harness/db_fixtures.py`."""

from __future__ import annotations

import pytest

from tests.harness.tokens import LocalIssuer

pytest_plugins = ["tests.harness.db_fixtures"]


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer()
