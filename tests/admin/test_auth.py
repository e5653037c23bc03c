"""Admin API authentication: every refusal is OpenAI-shaped, and refused calls change nothing."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from keyplane import keys
from keyplane.clock import FakeClock


def _get(server, headers):
    return httpx.get(server.v1 + "/organization/projects", headers=headers, timeout=10)


def test_no_key(shared_server):
    r = _get(shared_server, {})
    assert r.status_code == 401
    assert r.json()["error"]["message"].startswith("You didn't provide an API key")


def test_wrong_admin_key_is_masked(shared_server):
    wrong = keys.generate("admin")
    r = _get(shared_server, {"Authorization": f"Bearer {wrong}"})
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["code"] == "invalid_api_key" and wrong not in r.text
    assert keys.mask(wrong) in err["message"]


def test_project_key_refused_on_admin_api(shared_server):
    r = _get(shared_server, {"Authorization": f"Bearer {shared_server.api_key}"})
    assert r.status_code == 401
    assert "needs an admin key" in r.json()["error"]["message"]
    assert shared_server.api_key not in r.text


def test_bad_checksum_and_provider_key(shared_server):
    k = shared_server.admin_key
    bad = k[:-1] + ("A" if k[-1] != "A" else "B")
    r = _get(shared_server, {"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401 and "checksum" in r.json()["error"]["message"]
    provider = "sk-proj-" + "a" * 40 + "T3BlbkFJ" + "b" * 40
    r = _get(shared_server, {"Authorization": f"Bearer {provider}"})
    assert r.status_code == 401 and "OpenAI key" in r.json()["error"]["message"]


def test_basic_auth_refused(shared_server):
    r = _get(shared_server, {"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]


def test_deleted_admin_key_stops_working_at_once(admin, server):
    created = admin.admin.organization.admin_api_keys.create(name="temp")
    c2 = OpenAI(base_url=server.v1, admin_api_key=created.value, api_key="x", max_retries=0)
    assert c2.admin.organization.projects.list().data
    admin.admin.organization.admin_api_keys.delete(created.id)
    with pytest.raises(openai.AuthenticationError) as e:
        c2.admin.organization.projects.list()
    assert "revoked" in e.value.message


def test_expired_admin_key(database_url, gateways):
    """An admin key expires on the gateway's clock (injected here: the test moves it, nothing waits)."""
    clock = FakeClock()
    srv = gateways.start(None, clock, store=database_url)
    admin = {"Authorization": f"Bearer {srv.admin_key}"}
    r = httpx.post(
        srv.v1 + "/organization/admin_api_keys", json={"name": "short", "expires_in_seconds": 1}, headers=admin
    )
    assert r.status_code == 200, r.text
    value = r.json()["value"]
    assert r.json()["expires_at"] == int(clock.now()) + 1
    assert _get(srv, {"Authorization": f"Bearer {value}"}).status_code == 200  # not yet
    clock.advance(1)
    r = _get(srv, {"Authorization": f"Bearer {value}"})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_unknown_route_and_method(shared_http):
    r = shared_http.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = shared_http.put("/projects")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_openapi_document(shared_http):
    doc = shared_http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "post" in doc["paths"]["/v1/organization/projects/{project_id}/api_keys"]
    assert doc["paths"]["/v1/organization/api_keys/lookup"]["post"]["tags"] == ["keyplane extension"]
