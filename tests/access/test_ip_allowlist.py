"""IP allowlists of the organization, a project and a key: refused right after authentication, before any
upstream call; forwarded-for headers believed only from configured trusted proxies."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from keyplane.testing import FakeUpstream
from tests.proxy.conftest import fake_config, new_key
from tests.support import Gateways, RunningServer

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def trusted_gw(database_url: str, gateways: Gateways, fake: FakeUpstream) -> Iterator[RunningServer]:
    srv = gateways.start(fake_config(fake), store=database_url, KEYPLANE_TRUSTED_PROXIES="127.0.0.1/32, ::1")
    yield srv
    gateways.stop_all()  # before the test's PostgreSQL database is dropped


ADMIN_AT = "127.0.0.2"  # the admin calls come from here; the organization's lists keep it (they hold the admin API)


def _set(srv: RunningServer, path: str, cidrs: list[str] | None) -> httpx.Response:
    h = {"Authorization": f"Bearer {srv.admin_key}"}
    url = f"{srv.v1}/organization{path}/ip_allowlist"
    if cidrs and not path:
        cidrs = [*cidrs, f"{ADMIN_AT}/32"]
    with httpx.Client(transport=httpx.HTTPTransport(local_address=ADMIN_AT)) as c:
        return c.delete(url, headers=h) if cidrs is None else c.post(url, json={"cidrs": cidrs}, headers=h)


def _chat(srv: RunningServer, key: str | None = None, **headers: str) -> openai.types.chat.ChatCompletion:
    c = openai.OpenAI(base_url=srv.v1, api_key=key or srv.api_key, max_retries=0, default_headers=headers)
    return c.chat.completions.create(model="gpt-4o-mini", messages=MSG)


def _refused(srv: RunningServer, address: str, key: str | None = None, **headers: str) -> str:
    with pytest.raises(openai.PermissionDeniedError) as e:
        _chat(srv, key, **headers)
    assert e.value.code == "ip_not_allowed"
    assert address in e.value.message, e.value.message
    return e.value.message


def test_org_project_and_key_allowlists(gw, fake: FakeUpstream):
    r = _set(gw, "", ["10.0.0.0/8"])
    assert r.status_code == 200 and r.json()["cidrs"] == ["10.0.0.0/8", "127.0.0.2/32"] and r.json()["enabled"]
    fake.reset()
    assert "organization" in _refused(gw, "127.0.0.1")
    # Without trusted proxies, a client's own X-Forwarded-For is not believed.
    _refused(gw, "127.0.0.1", **{"X-Forwarded-For": "10.1.2.3"})
    _refused(gw, "127.0.0.1", Forwarded="for=10.1.2.3")
    assert fake.model_requests() == []
    bad = _set(gw, "", ["10.0.0.0/33"])
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cidrs"

    assert _set(gw, "", ["127.0.0.0/8"]).status_code == 200
    assert _chat(gw).choices
    assert _set(gw, f"/projects/{gw.project_id}", ["192.0.2.0/24"]).status_code == 200
    assert "project" in _refused(gw, "127.0.0.1")
    assert _set(gw, f"/projects/{gw.project_id}", None).status_code == 200
    assert _chat(gw).choices

    other = new_key(gw)
    assert _set(gw, f"/projects/{gw.project_id}/api_keys/{other['id']}", ["::1/128"]).status_code == 200
    assert "API key" in _refused(gw, "127.0.0.1", key=other["value"])
    assert _chat(gw).choices  # the project's other keys are not on that list
    assert _set(gw, "", None).status_code == 200
    got = httpx.get(f"{gw.v1}/organization/ip_allowlist", headers={"Authorization": f"Bearer {gw.admin_key}"})
    assert got.json()["enabled"] is False

    r = httpx.get(gw.v1 + "/organization/audit_logs", headers={"Authorization": f"Bearer {gw.admin_key}"})
    types = [e["type"] for e in r.json()["data"]]
    assert "ip_allowlist.updated" in types and "ip_allowlist.deleted" in types


def test_trusted_proxies(trusted_gw, fake: FakeUpstream):
    gw = trusted_gw
    assert _set(gw, "", ["10.0.0.0/8"]).status_code == 200
    fake.reset()
    _refused(gw, "127.0.0.1")  # no forwarded header: the proxy's own address
    # The rightmost address that is not a trusted proxy is the client; what a client prepends is ignored.
    _refused(gw, "192.0.2.5", **{"X-Forwarded-For": "10.1.2.3, 192.0.2.5"})
    _refused(gw, "garbage", **{"X-Forwarded-For": "10.1.2.3, garbage"})
    assert fake.model_requests() == []
    assert _chat(gw, **{"X-Forwarded-For": "10.1.2.3"}).choices
    assert _chat(gw, **{"X-Forwarded-For": "192.0.2.5, 10.1.2.3, 127.0.0.1"}).choices
    assert _chat(gw, Forwarded='for="10.1.2.3:4711";proto=https').choices
