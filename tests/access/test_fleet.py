"""Two instances, one PostgreSQL and one Redis: a policy set on one is enforced by the other within a second,
through the bus (the revision poll is slowed to 30 s so it cannot be what carries the change)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import openai
import pytest

from keyplane.testing import FakeUpstream
from tests.proxy.conftest import fake_config
from tests.support import Gateways, RunningServer, postgres_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def pair(gateways: Gateways, fake: FakeUpstream) -> Iterator[tuple[RunningServer, RunningServer]]:
    with postgres_database() as url:
        env = {
            "KEYPLANE_REDIS_URL": "redis://127.0.0.1:6379/0",
            "KEYPLANE_REDIS_PREFIX": f"kpt{secrets.token_hex(4)}",
            "KEYPLANE_SNAPSHOT_POLL_SECONDS": "30",
        }
        try:  # two instances of one store and org (one secret)
            a = gateways.start(fake_config(fake), store=url, **env)
            b = gateways.start(fake_config(fake), store=url, **env)
            yield a, b
        finally:
            gateways.stop_all()  # before the database is dropped


def test_policy_reaches_the_other_instance_within_a_second(pair, fake: FakeUpstream):
    a, b = pair
    admin = openai.OpenAI(base_url=a.v1, admin_api_key=a.admin_key, api_key="unused", max_retries=0)
    on_b = openai.OpenAI(base_url=b.v1, api_key=b.api_key, max_retries=0)
    assert on_b.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]).choices
    admin.admin.organization.projects.model_permissions.update(a.project_id, mode="deny_list", model_ids=["gpt-4o"])
    admin.admin.organization.projects.hosted_tool_permissions.update(a.project_id, mcp={"enabled": False})
    t0 = time.monotonic()
    while True:
        fake.reset()
        try:
            on_b.responses.create(
                model="gpt-4o-mini",
                input="hi",
                tools=[{"type": "mcp", "server_label": "x", "server_url": "https://example.com"}],
            )
        except openai.PermissionDeniedError as e:
            assert e.code == "tool_not_permitted"
            assert fake.model_requests() == []
            break
        assert time.monotonic() - t0 < 1.0, "the policy did not reach the other instance within 1 s"
        time.sleep(0.02)
    with pytest.raises(openai.PermissionDeniedError):
        on_b.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert fake.model_requests() == []


def _within_a_second(check, what: str) -> None:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < 1.0, f"{what} did not reach the other instance within 1 s"
        time.sleep(0.02)


def test_org_allowlist_and_model_list_reach_the_other_instance_within_a_second(pair, fake: FakeUpstream):
    import httpx

    a, b = pair
    auth = {"Authorization": f"Bearer {a.admin_key}"}
    on_b = openai.OpenAI(base_url=b.v1, api_key=b.api_key, max_retries=0)
    assert "gpt-4o" in {m.id for m in on_b.models.list()}
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), headers=auth, timeout=20) as at:
        assert at.post(a.v1 + "/organization/ip_allowlist", json={"cidrs": ["127.0.0.2/32"]}).status_code == 200
        # B's admin API, dashboard and /v1 refuse 127.0.0.1 within a second (the bus, not the 30 s poll).
        _within_a_second(
            lambda: httpx.get(b.v1 + "/organization/projects", headers=auth).status_code == 403,
            "the organization's IP allowlist (admin API)",
        )
        assert httpx.get(b.base_url + "/login").status_code == 403
        fake.reset()
        with pytest.raises(openai.PermissionDeniedError):
            on_b.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert fake.model_requests() == []
        assert at.get(b.v1 + "/organization/projects").status_code == 200  # the kept address still gets in
        assert at.delete(a.v1 + "/organization/ip_allowlist").status_code == 200
        _within_a_second(
            lambda: httpx.get(b.v1 + "/organization/projects", headers=auth).status_code == 200,
            "lifting the organization's IP allowlist",
        )
    admin = openai.OpenAI(base_url=a.v1, admin_api_key=a.admin_key, api_key="unused", max_retries=0)
    admin.admin.organization.projects.model_permissions.update(
        a.project_id, mode="allow_list", model_ids=["gpt-4o-mini"]
    )
    _within_a_second(lambda: {m.id for m in on_b.models.list()} == {"gpt-4o-mini"}, "the model permissions (list)")
    with pytest.raises(openai.NotFoundError):
        on_b.models.retrieve("gpt-4o")
