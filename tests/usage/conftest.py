from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keyplane.config import database_url_for
from keyplane.store import db
from keyplane.testing import FakeUpstream
from tests.support import init_org, make_settings, start_server
from tests.usage.support import fake_config


@pytest.fixture
async def engine(database_url: str, tmp_path: Path) -> AsyncIterator[object]:
    """A migrated store (SQLite file or a fresh PostgreSQL database) as an AsyncEngine."""
    eng = db.make_engine(database_url_for(database_url, tmp_path))
    await db.migrate(eng)
    try:
        yield eng
    finally:
        await eng.dispose()
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def fake():
    f = FakeUpstream().start_in_thread()
    yield f
    f.stop_thread()


@pytest.fixture
def gateway(tmp_path, database_url, fake):
    """Start keyplane servers (sharing one store and org) routed to the fake upstream."""
    fake.reset()
    started = []

    def make(extra: str = "", **env: str):
        settings = make_settings(
            tmp_path / f"home{len(started)}", database_url, config_text=fake_config(fake, extra), **env
        )
        srv = start_server(settings, init_org(settings) if not started else started[0].init)
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()
