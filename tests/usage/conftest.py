from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from keyplane.config import database_url_for
from keyplane.store import db
from keyplane.testing import FakeUpstream
from tests.support import Gateways, RunningServer
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


@pytest.fixture
def gateway(database_url: str, gateways: Gateways, fake: FakeUpstream) -> Iterator[Callable[..., RunningServer]]:
    """Start keyplane servers (sharing one store and org) routed to the fake upstream (tests/conftest.py ``fake``,
    reset for the test)."""

    def make(extra: str = "", **env: str) -> RunningServer:
        return gateways.start(fake_config(fake, extra), store=database_url, **env)

    yield make
    gateways.stop_all()  # before the test's PostgreSQL database is dropped
