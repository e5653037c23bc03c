"""A gateway routed to the fake upstream, on SQLite and PostgreSQL, with admin and project clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from keyplane.testing import FakeUpstream
from tests.proxy.conftest import fake_config
from tests.support import Gateways, RunningServer


@pytest.fixture
def gw(database_url: str, gateways: Gateways, fake: FakeUpstream) -> Iterator[RunningServer]:
    srv = gateways.start(fake_config(fake), store=database_url)
    yield srv
    gateways.stop_all()  # before the test's PostgreSQL database is dropped


@pytest.fixture
def admin(gw: RunningServer) -> OpenAI:
    return OpenAI(base_url=gw.v1, admin_api_key=gw.admin_key, api_key="unused", max_retries=0)


@pytest.fixture
def client(gw: RunningServer) -> OpenAI:
    return OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
