"""Authentication and authorization on /v1, on SQLite and PostgreSQL (the `server` fixture; demo upstream).

Each 401 diagnosis of reference/openai-surface.md "Error body", key states with their stored reasons,
archived projects, OpenAI-Organization / OpenAI-Project checks, 403 missing_scope, last_used_at.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from keyplane import keys
from tests.proxy.conftest import admin, new_key, wait_for

CHAT = {"model": "demo-echo", "messages": [{"role": "user", "content": "hi"}]}


def post(srv, headers=None, path="/chat/completions", json=CHAT, **kw) -> httpx.Response:
    return httpx.post(srv.v1 + path, json=json, headers=headers or {}, **kw)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def err(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert r.headers["x-request-id"].startswith("req_")
    assert "openai-processing-ms" in r.headers
    return body["error"]


def test_header_diagnostics(server):
    # The happy path, through the official SDK.
    c = openai.OpenAI(base_url=server.v1, api_key=server.api_key)
    done = c.chat.completions.create(**CHAT)
    assert done.choices[0].message.content == "You said: hi"

    r = post(server)
    assert r.status_code == 401
    e = err(r)
    assert e["code"] is None and e["type"] == "invalid_request_error"
    assert e["message"].startswith("You didn't provide an API key.")

    e = err(post(server, params={"api_key": server.api_key}))
    assert "from the URL" in e["message"] and server.api_key not in e["message"]
    e = err(post(server, path="/chat/completions?key=abc"))
    assert "from the URL" in e["message"]

    e = err(post(server, {"api-key": server.api_key}))
    assert "`api-key` header" in e["message"]

    e = err(post(server, {"Authorization": server.api_key}))
    assert "without the word `Bearer`" in e["message"]

    e = err(post(server, {"Authorization": "Basic dXNlcjpwYXNz"}))
    assert "Basic auth" in e["message"]

    e = err(post(server, {"Authorization": "Bearer"}))
    assert "no key after it" in e["message"]


def test_stray_whitespace_diagnosed(server):
    # Real newlines cannot cross HTTP; they arrive escaped from config files and env files.
    for suffix in ("\\n", "%0A", " \\n"):
        r = post(server, bearer(server.api_key + suffix))
        assert r.status_code == 401
        e = err(r)
        assert e["code"] == "invalid_api_key" and "space or a newline" in e["message"], suffix
    e = err(post(server, {"Authorization": "Bearer  " + server.api_key}))
    assert "space or a newline" in e["message"]


def test_wrong_checksum_openai_and_admin_keys(server):
    # A well-formed key that does not exist: masked as the platform does.
    unknown = keys.generate("proj")
    e = err(post(server, bearer(unknown)))
    assert e["code"] == "invalid_api_key"
    assert f"Incorrect API key provided: {keys.mask(unknown)}." in e["message"]
    assert unknown not in e["message"] and keys.mask(unknown)[:8] == unknown[:8]

    # One changed character: refused by the checksum, before any lookup.
    k = server.api_key
    typo = k[:-1] + ("A" if k[-1] != "A" else "B")
    e = err(post(server, bearer(typo)))
    assert e["code"] == "invalid_api_key" and "checksum" in e["message"]

    openai_key = "sk-proj-" + "a" * 74 + "T3BlbkFJ" + "b" * 74
    e = err(post(server, bearer(openai_key)))
    assert "looks like an OpenAI key" in e["message"] and openai_key not in e["message"]

    e = err(post(server, bearer(server.admin_key)))
    assert e["code"] == "invalid_api_key" and "admin key" in e["message"]

    with pytest.raises(openai.AuthenticationError) as ei:
        openai.OpenAI(base_url=server.v1, api_key=unknown, max_retries=0).models.list()
    assert ei.value.status_code == 401 and ei.value.request_id and ei.value.request_id.startswith("req_")


def test_org_and_project_headers(server):
    org = server.init.get("org_id") or server.call(_org_id(server))
    ok = openai.OpenAI(base_url=server.v1, api_key=server.api_key, organization=org, project=server.project_id)
    assert ok.chat.completions.create(**CHAT).choices

    with pytest.raises(openai.AuthenticationError) as ei:
        openai.OpenAI(
            base_url=server.v1, api_key=server.api_key, organization="org-other", max_retries=0
        ).chat.completions.create(**CHAT)
    assert ei.value.code == "mismatched_organization"
    assert "OpenAI-Organization header should match organization for API key" in ei.value.message

    with pytest.raises(openai.AuthenticationError) as ei:
        openai.OpenAI(
            base_url=server.v1, api_key=server.api_key, project="proj_other", max_retries=0
        ).chat.completions.create(**CHAT)
    assert ei.value.code == "mismatched_project"


async def _org_id(server):
    return server.app.runtime.snapshot.org_id


def test_key_states_and_reasons(server):
    k = new_key(server)
    value, kid = k["value"], k["id"]
    assert post(server, bearer(value)).status_code == 200

    admin(server, "POST", f"/projects/{server.project_id}/api_keys/{kid}/suspend", {"reason": "too many tokens at 3am"})
    e = err(post(server, bearer(value)))
    assert e["code"] == "invalid_api_key"
    assert "is suspended (too many tokens at 3am)" in e["message"] and keys.mask(value) in e["message"]

    admin(server, "POST", f"/projects/{server.project_id}/api_keys/{kid}/resume")
    assert post(server, bearer(value)).status_code == 200

    admin(server, "POST", f"/api_keys/{kid}/revoke", {"reason": "found in a public gist"})
    r = post(server, bearer(value))
    assert r.status_code == 401 and "has been revoked (found in a public gist)" in err(r)["message"]

    short = new_key(server, expires_in_seconds=2)
    assert post(server, bearer(short["value"])).status_code == 200
    wait_for(lambda: post(server, bearer(short["value"])).status_code == 401, timeout=5)
    assert "has expired" in err(post(server, bearer(short["value"])))["message"]


def test_archived_project_refused(server):
    p = admin(server, "POST", "/projects", {"name": "Soon archived"})
    k = admin(server, "POST", f"/projects/{p['id']}/api_keys", {"name": "k", "permissions": "all"})
    assert post(server, bearer(k["value"])).status_code == 200
    admin(server, "POST", f"/projects/{p['id']}/archive")
    r = post(server, bearer(k["value"]))
    assert r.status_code == 401
    e = err(r)
    assert e["code"] == "project_archived" and "archived" in e["message"] and "Soon archived" in e["message"]


def test_missing_scope_before_upstream(server):
    reader = new_key(server, permissions=["api.model.read"])
    c = openai.OpenAI(base_url=server.v1, api_key=reader["value"], max_retries=0)
    assert any(m.id == "demo-echo" for m in c.models.list())
    with pytest.raises(openai.PermissionDeniedError) as ei:
        c.chat.completions.create(**CHAT)
    assert ei.value.status_code == 403 and ei.value.code == "missing_scope"
    assert "Missing scopes: api.model.request." in ei.value.message

    ro = new_key(server, permissions="read_only")
    with pytest.raises(openai.PermissionDeniedError) as ei:
        openai.OpenAI(base_url=server.v1, api_key=ro["value"], max_retries=0).responses.create(
            model="demo-echo", input="hi"
        )
    assert "api.responses.write" in ei.value.message

    responses_only = new_key(server, permissions=["api.responses.write"])
    c = openai.OpenAI(base_url=server.v1, api_key=responses_only["value"], max_retries=0)
    assert c.responses.create(model="demo-echo", input="hi").output_text == "You said: hi"
    with pytest.raises(openai.PermissionDeniedError) as ei:
        c.models.list()
    assert "api.model.read" in ei.value.message


def test_last_used_at_updated(server):
    k = new_key(server)
    assert post(server, bearer(k["value"])).status_code == 200
    server.call(server.app.runtime.last_used.flush())
    item = admin(server, "GET", f"/projects/{server.project_id}/api_keys/{k['id']}")
    assert item["last_used_at"] is not None


def test_revocation_reaches_the_snapshot_without_restart(server):
    """Rule 1: a revoked key is refused without any SQL on the request path, within the poll interval."""
    k = new_key(server)
    assert post(server, bearer(k["value"])).status_code == 200
    admin(server, "DELETE", f"/projects/{server.project_id}/api_keys/{k['id']}")
    r = post(server, bearer(k["value"]))
    assert r.status_code == 401 and "revoked" in err(r)["message"]
