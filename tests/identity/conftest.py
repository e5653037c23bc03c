from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from keyplane.testing import FakeUpstream
from keyplane.testing.fake_oidc import FakeOIDC
from tests.proxy.conftest import fake_config
from tests.support import Gateways, RunningServer


@pytest.fixture(scope="session")
def idp_session() -> Iterator[FakeOIDC]:
    with FakeOIDC() as idp:
        yield idp


@pytest.fixture
def idp(idp_session: FakeOIDC) -> FakeOIDC:
    idp_session.retire_old_keys()
    return idp_session


@pytest.fixture
def gateway(database_url: str, gateways: Gateways, fake: FakeUpstream) -> Iterator[RunningServer]:
    """keyplane routed to the fake upstream, on SQLite and PostgreSQL."""
    yield gateways.start(fake_config(fake), store=database_url)
    gateways.stop_all()  # before the test's PostgreSQL database is dropped


@pytest.fixture
def admin(gateway: RunningServer) -> OpenAI:
    return OpenAI(base_url=gateway.v1, admin_api_key=gateway.admin_key, api_key="unused", max_retries=0)
