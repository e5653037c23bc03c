from __future__ import annotations

import httpx
import pytest
from openai import OpenAI


@pytest.fixture
def admin(server) -> OpenAI:
    """The official SDK's admin client against keyplane."""
    return OpenAI(base_url=server.v1, admin_api_key=server.admin_key, api_key="unused", max_retries=0)


@pytest.fixture
def http(server):
    """A raw HTTP client with the admin key, for keyplane's extension endpoints and error cases."""
    with httpx.Client(
        base_url=server.v1 + "/organization", headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=10
    ) as c:
        yield c


@pytest.fixture
def shared_http(shared_server):
    """``http`` on the module's shared server (tests/conftest.py ``shared_server``): for validation-only tests."""
    with httpx.Client(
        base_url=shared_server.v1 + "/organization",
        headers={"Authorization": f"Bearer {shared_server.admin_key}"},
        timeout=10,
    ) as c:
        yield c
