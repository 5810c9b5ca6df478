"""Databases for the inventory tests: every test runs on a real SQLite file and on PostgreSQL.

PostgreSQL is a throwaway server started once per session (:mod:`tests.support.postgres`), or
the one named by ``FLEETOPS_TEST_POSTGRES_URL``; each test gets a schema of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from tests.support.postgres import postgres_server


@pytest.fixture(scope="session")
def postgres_base_url() -> Iterator[str | None]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state/inventory.db"
        return
    base = request.getfixturevalue("postgres_base_url")
    if not base:
        pytest.skip(
            "no PostgreSQL here: install Debian's postgresql or set FLEETOPS_TEST_POSTGRES_URL"
        )
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    options = {"options": f"-csearch_path={schema}"}
    yield make_url(base).update_query_dict(options).render_as_string(hide_password=False)
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()
