from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import RunningServer, init_org, make_settings, postgres_database, start_server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield ""
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str):
    return make_settings(tmp_path / "home", database_url)


@pytest.fixture
def server(settings) -> Iterator[RunningServer]:
    """A real keyplane server (uvicorn, real HTTP, port chosen by the OS) with an initialized org."""
    init = init_org(settings)
    srv = start_server(settings, init)
    try:
        yield srv
    finally:
        srv.stop()
