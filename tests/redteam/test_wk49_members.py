"""Week 49 red-team review of admin key roles and invites (keyplane.members): the shapes of a request a
reader's admin key might use to write, and invite links used twice, guessed, expired or raced. These held
before the review and are kept so that they go on holding."""

from __future__ import annotations

import concurrent.futures
import re

import httpx

from keyplane.members import invites


def _reader(server) -> str:  # type: ignore[no-untyped-def]
    r = httpx.post(
        server.v1 + "/organization/admin_api_keys",
        json={"name": "auditor", "role": "reader"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["value"]  # type: ignore[no-any-return]


def test_wk49_a_reader_admin_key_writes_through_no_request_shape(server):
    key = _reader(server)
    pid = server.project_id
    h = {"Authorization": f"Bearer {key}"}
    base = server.base_url
    attempts = [
        ("POST", "/v1/organization/projects", {"name": "x"}),
        ("POST", "/v1/organization/projects/", {"name": "x"}),  # trailing slash
        ("POST", "/v1/organization/%70rojects", {"name": "x"}),  # percent-encoded segment
        ("POST", "/v1//organization/projects", {"name": "x"}),  # empty segment
        ("POST", f"/v1/organization/projects/{pid}/../../invites", {"email": "e@x.io", "role": "owner"}),
        ("post", "/v1/organization/invites", {"email": "e@x.io", "role": "owner"}),  # method case
        ("PUT", "/v1/organization/invites", {"email": "e@x.io", "role": "owner"}),
        ("PATCH", f"/v1/organization/projects/{pid}", {"name": "x"}),
        ("DELETE", f"/v1/organization/projects/{pid}/api_keys/{server.init['api_key_id']}", None),
        ("POST", "/v1/organization/api_keys/lookup/", {"sha256": "0" * 64}),  # not the read-only POST
        ("POST", "/v1/organization/admin_api_keys", {"name": "escalate"}),
        ("POST", f"/v1/organization/users/{server.init['owner_user_id']}/roles", {"role_id": "role-reader"}),
    ]
    with httpx.Client(timeout=10, follow_redirects=True) as c:  # a redirect (trailing slash) is followed
        for method, path, body in attempts:
            r = c.request(method, base + path, json=body, headers={**h, "X-HTTP-Method-Override": "GET"})
            assert r.status_code >= 400, (method, path, r.status_code, r.text)
            assert r.status_code != 200
        # Nothing changed: one project, one admin key more (the reader's), no invite.
        owner = {"Authorization": f"Bearer {server.admin_key}"}
        assert [p["id"] for p in c.get(server.v1 + "/organization/projects", headers=owner).json()["data"]] == [pid]
        assert c.get(server.v1 + "/organization/invites", headers=owner).json()["data"] == []


def test_wk49_an_invite_link_works_once_even_when_raced(server):
    r = httpx.post(
        server.v1 + "/organization/invites",
        json={"email": "race@example.com", "role": "reader"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    url = r.json()["accept_url"]
    token = url.rsplit("/", 1)[1]
    assert token.startswith(invites.TOKEN_PREFIX) and len(token) >= 40
    page = httpx.get(server.base_url + "/invite/" + token, timeout=10)
    assert page.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    cookies = page.cookies
    form = {
        "password": "correct horse battery staple 9",
        "password2": "correct horse battery staple 9",
        "name": "Race",
        **({"csrf_token": csrf.group(1)} if csrf else {}),
    }

    def accept(_: int) -> int:
        return httpx.post(server.base_url + "/invite/" + token, data=form, cookies=cookies, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(accept, range(8)))
    assert sum(1 for c in codes if c in (200, 303)) == 1, codes
    users = httpx.get(
        server.v1 + "/organization/users", headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=10
    ).json()["data"]
    assert [u["role"] for u in users if u["email"] == "race@example.com"] == ["reader"]
    # Used, a guessed neighbour, and a malformed one: all the same 404, nothing learned.
    for t in (token, token[:-1] + ("A" if token[-1] != "A" else "B"), "kpinv_", "x" * 200):
        assert httpx.get(server.base_url + "/invite/" + t, timeout=10).status_code == 404
