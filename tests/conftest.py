from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyplane.testing import FakeUpstream
from tests.support import Gateways, RunningServer, init_org, make_settings, postgres_database


@pytest.fixture(scope="session")
def fake_session() -> Iterator[FakeUpstream]:
    """The project's fake upstream, one per test process."""
    f = FakeUpstream().start_in_thread()
    yield f
    f.stop_thread()


@pytest.fixture
def fake(fake_session: FakeUpstream) -> FakeUpstream:
    """The shared fake upstream, reset for this test."""
    fake_session.reset()
    return fake_session


@pytest.fixture(scope="session")
def fake2_session() -> Iterator[FakeUpstream]:
    """A second fake upstream (another provider, a fallback), one per test process."""
    f = FakeUpstream().start_in_thread()
    yield f
    f.stop_thread()


@pytest.fixture
def fake2(fake2_session: FakeUpstream) -> FakeUpstream:
    """The shared second fake upstream, reset for this test."""
    fake2_session.reset()
    return fake2_session


@pytest.fixture(scope="session")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialized SQLite home (its ``init.json`` holds the keys), copied by each gateway of a test:
    migrating once per session is the slow part."""
    home = tmp_path_factory.mktemp("tmpl") / "home"
    settings = make_settings(home, "")
    (home / "init.json").write_text(json.dumps(init_org(settings)))
    return home


@pytest.fixture
def gateways(template_home: Path, tmp_path: Path) -> Iterator[Gateways]:
    """The test's gateway factory (tests/support.py Gateways): every server it started is stopped after."""
    g = Gateways(template_home, tmp_path)
    yield g
    g.stop_all()


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
def server(database_url: str, gateways: Gateways) -> Iterator[RunningServer]:
    """A real keyplane server (the factory's: uvicorn, real HTTP, port chosen by the OS) with an initialized org,
    on the test's store (SQLite and PostgreSQL)."""
    yield gateways.start(store=database_url)
    gateways.stop_all()  # before the test's PostgreSQL database is dropped


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_server(
    request: pytest.FixtureRequest, template_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server (the factory's) that a test module shares, on SQLite and on PostgreSQL: for the tests that only
    check request validation (errors for bad input) and change nothing, where a fresh server and database per
    test only costs time. A test that writes asks for ``server``."""
    g = Gateways(template_home, tmp_path_factory.mktemp("shared"))
    if request.param == "sqlite":
        yield g.start()
        g.stop_all()
        return
    with postgres_database() as url:
        try:
            yield g.start(store=url)
        finally:
            g.stop_all()  # before the database is dropped


@pytest.fixture(autouse=True)
def _cli_state_of_this_test() -> Iterator[None]:
    """The CLI's global options (``--config``, kept by the root callback in keyplane.cli.common.state) start
    unset in every test: a test that builds its own Typer app without the root callback read whatever config
    an earlier CLI test of the same worker had named (an order-dependent failure)."""
    import sys

    common = sys.modules.get("keyplane.cli.common")
    if common is not None:
        common.state.config = None
    yield
