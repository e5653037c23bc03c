"""A gateway routed to the fake upstream, on SQLite and PostgreSQL, with admin and project clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from keyplane.testing import FakeUpstream
from tests.proxy.conftest import fake_config
from tests.support import RunningServer, init_org, make_settings, start_server


@pytest.fixture
def gw(tmp_path: Path, database_url: str, fake: FakeUpstream) -> Iterator[RunningServer]:
    settings = make_settings(tmp_path / "home", database_url, config_text=fake_config(fake))
    srv = start_server(settings, init_org(settings))
    srv.app.runtime.pipeline.billing = None  # admission is tests/billing's; here only the refusals matter
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def admin(gw: RunningServer) -> OpenAI:
    return OpenAI(base_url=gw.v1, admin_api_key=gw.admin_key, api_key="unused", max_retries=0)


@pytest.fixture
def client(gw: RunningServer) -> OpenAI:
    return OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
