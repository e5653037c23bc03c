from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from keyplane.testing import FakeUpstream
from keyplane.testing.fake_oidc import FakeOIDC
from tests.proxy.conftest import fake_config
from tests.support import RunningServer, init_org, make_settings, start_server


@pytest.fixture(scope="session")
def idp_session() -> Iterator[FakeOIDC]:
    with FakeOIDC() as idp:
        yield idp


@pytest.fixture
def idp(idp_session: FakeOIDC) -> FakeOIDC:
    idp_session.retire_old_keys()
    return idp_session


@pytest.fixture
def gateway(tmp_path: Path, database_url: str, fake: FakeUpstream) -> Iterator[RunningServer]:
    """keyplane routed to the fake upstream, on SQLite and PostgreSQL."""
    settings = make_settings(tmp_path / "home", database_url, config_text=fake_config(fake))
    srv = start_server(settings, init_org(settings))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def admin(gateway: RunningServer) -> OpenAI:
    return OpenAI(base_url=gateway.v1, admin_api_key=gateway.admin_key, api_key="unused", max_retries=0)
