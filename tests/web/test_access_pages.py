"""The Roles & groups, Access and Single sign-on pages over plain HTTP (issue 16): each page's view, each
form's effect (read back through the admin API, and on /v1 where a policy refuses), the audit entries,
bad input shown on the page, a reader refused, the admin API's permission rule, CSRF."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from keyplane.store.models import AuditLog
from tests.members.support import make_member
from tests.web.conftest import Web

READER = "reader@example.com"


def api(srv: Any, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(
        method,
        srv.v1 + "/organization" + path,
        json=body,
        timeout=10,
        headers={"Authorization": f"Bearer {srv.admin_key}"},
    )


def audits(srv: Any, event: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(actor, details) of every audit entry of ``event``, oldest first."""

    async def go() -> list[AuditLog]:
        async with srv.app.runtime.read() as s:
            return list(
                (await s.execute(select(AuditLog).where(AuditLog.type == event).order_by(AuditLog.seq))).scalars()
            )

    return [(orjson.loads(a.actor), orjson.loads(a.details)) for a in srv.call(go())]


def by_dashboard(actor: dict[str, Any], email: str = "owner@example.com") -> bool:
    return actor["type"] == "session" and actor["session"]["user"]["email"] == email


def refused_clearly(r: httpx.Response, status: int, words: str) -> None:
    """An error shown on a dashboard page, never a traceback."""
    assert r.status_code == status, r.text[:2000]
    assert r.headers["content-type"].startswith("text/html")
    assert words in html.unescape(r.text), r.text[:3000]
    assert "Traceback" not in r.text and 'role="alert"' in r.text


def add_user(owner: Web, srv: Any, clock: Any, email: str = READER) -> tuple[Web, str]:
    """A reader added on the Users page, signed in (TOTP enrolled); returns (their client, their id)."""
    r = owner.post("/users", {"email": email, "role": "reader"})
    password = re.search(r'id="secret-value"[^>]*value="([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    w = Web(srv, clock)
    w.sign_in(email, password)
    uid = next(u["id"] for u in api(srv, "GET", "/users?limit=100").json()["data"] if u["email"] == email)
    return w, uid


@pytest.fixture
def reader(owner, web_server, clock):
    w, uid = add_user(owner, web_server, clock)
    w.uid = uid  # type: ignore[attr-defined]
    yield w
    w.close()


def _group(owner: Web, name: str = "platform") -> str:
    owner.get("/roles")
    r = owner.post("/groups", {"name": name})
    assert r.status_code == 303, r.text
    return r.headers["location"].rsplit("/", 1)[1]


def _role(owner: Web, name: str, perms: list[str]) -> str:
    owner.get("/roles")
    r = owner.post("/roles", {"role_name": name, "permissions": perms})
    assert r.status_code == 303, r.text
    return next(x["id"] for x in api(owner.server, "GET", "/roles").json()["data"] if x["name"] == name)


def test_pages_render_and_are_in_the_navigation(owner, web_server):
    pid, kid = web_server.project_id, web_server.init["api_key_id"]
    gid = _group(owner)
    nav = owner.get("/").text
    for href, text in (("/roles", "Roles &amp; groups"), ("/access", "Access"), ("/sso", "Single sign-on")):
        assert f'<a href="{href}">{text}</a>' in nav
    for path, h1 in (
        ("/roles", "Roles &amp; groups"),
        (f"/groups/{gid}", "Group platform"),
        ("/access", "Access"),
        (f"/projects/{pid}/access", "Access of Default project"),
        (f"/projects/{pid}/keys/{kid}/access", "Access of default"),
        ("/sso", "Single sign-on"),
    ):
        r = owner.get(path)
        assert r.status_code == 200, (path, r.text[:1000])
        assert r.headers["cache-control"] == "no-store"
        assert f"<h1>{h1}</h1>" in r.text, path
        assert 'aria-current="page"' in r.text
    assert f'href="/projects/{pid}/access"' in owner.get(f"/projects/{pid}").text
    assert f'href="/projects/{pid}/keys/{kid}/access"' in owner.get(f"/projects/{pid}/keys/{kid}").text
    for path in ("/groups/group_nope", "/projects/proj_nope/access", f"/projects/{pid}/keys/key_nope/access"):
        assert owner.get(path).status_code == 404, path
    # SSO is not set on this server: the page says so and how to turn it on.
    sso = owner.get("/sso").text
    assert 'id="sso-state"><span class="status status-expired">off</span>' in sso and "sso_issuer" in sso


def test_roles_created_changed_given_and_deleted(owner, reader, web_server):
    rid = _role(owner, "deployer", ["api.project.read", "api.project.write"])
    got = api(web_server, "GET", f"/roles/{rid}").json()
    assert got["permissions"] == ["api.project.read", "api.project.write"] and got["predefined_role"] is False
    actor, details = audits(web_server, "role.created")[-1]
    assert by_dashboard(actor) and details["role_name"] == "deployer"
    page = owner.get("/roles").text
    assert "Role “deployer” created." in page and f'data-role-id="{rid}"' in page

    # Bad input: shown on the page with what was typed, nothing stored.
    r = owner.post("/roles", {"role_name": "Owner", "description": "mine", "permissions": ["api.project.read"]})
    refused_clearly(r, 400, "is a predefined role")
    assert 'value="Owner"' in r.text and 'value="mine"' in r.text
    refused_clearly(
        owner.post("/roles", {"role_name": "x", "permissions": ["api.everything"]}),
        400,
        "Unknown permission(s): api.everything",
    )
    refused_clearly(owner.post("/roles", {"role_name": "deployer"}), 409, "already exists")
    refused_clearly(owner.post("/roles", {"role_name": ""}), 400, "non-empty string")
    assert [x["name"] for x in api(web_server, "GET", "/roles").json()["data"]] == ["owner", "reader", "deployer"]

    # Changed: name, description, fewer permissions.
    r = owner.post(
        f"/roles/{rid}", {"role_name": "shipper", "description": "ships", "permissions": ["api.project.read"]}
    )
    assert r.status_code == 303
    got = api(web_server, "GET", f"/roles/{rid}").json()
    assert (got["name"], got["description"], got["permissions"]) == ("shipper", "ships", ["api.project.read"])
    actor, details = audits(web_server, "role.updated")[-1]
    assert by_dashboard(actor) and details["changes_requested"]["permissions_removed"] == ["api.project.write"]

    # Given to a user and taken back.
    assert owner.post(f"/roles/{rid}/users", {"user_id": reader.uid}).status_code == 303
    held = api(web_server, "GET", f"/users/{reader.uid}/roles").json()["data"]
    assert [x["id"] for x in held] == ["role-reader", rid]
    assert by_dashboard(audits(web_server, "role.assignment.created")[-1][0])
    row = re.search(rf'<tr data-role-id="{rid}">(.*?)</tr>', owner.get("/roles").text, re.S).group(1)  # type: ignore[union-attr]
    assert READER in row
    refused_clearly(owner.post(f"/roles/{rid}/users", {"user_id": reader.uid}), 409, "already holds")
    refused_clearly(owner.post(f"/roles/{rid}/users", {"user_id": "user_nope"}), 404, "No user found")
    assert owner.post(f"/roles/{rid}/users/{reader.uid}/remove").status_code == 303
    assert [x["id"] for x in api(web_server, "GET", f"/users/{reader.uid}/roles").json()["data"]] == ["role-reader"]

    # Deleted (a predefined role cannot be).
    refused_clearly(owner.post("/roles/role-owner/delete"), 400, "predefined role")
    assert owner.post(f"/roles/{rid}/delete").status_code == 303
    assert api(web_server, "GET", f"/roles/{rid}").status_code == 404
    assert by_dashboard(audits(web_server, "role.deleted")[-1][0])


def test_groups_users_roles_and_projects(owner, reader, web_server):
    pid = web_server.project_id
    gid = _group(owner, "platform")
    assert api(web_server, "GET", f"/groups/{gid}").json()["name"] == "platform"
    assert by_dashboard(audits(web_server, "group.created")[-1][0])
    refused_clearly(owner.post("/groups", {"name": "  "}), 400, "non-empty string")

    assert owner.post(f"/groups/{gid}/users", {"user_id": reader.uid}).status_code == 303
    assert [u["id"] for u in api(web_server, "GET", f"/groups/{gid}/users").json()["data"]] == [reader.uid]
    refused_clearly(owner.post(f"/groups/{gid}/users", {"user_id": reader.uid}), 409, "already a member")
    rid = _role(owner, "lab", ["api.project.write"])
    assert owner.post(f"/groups/{gid}/roles", {"role_id": rid}).status_code == 303
    assert [r["id"] for r in api(web_server, "GET", f"/groups/{gid}/roles").json()["data"]] == [rid]
    refused_clearly(owner.post(f"/groups/{gid}/roles", {"role_id": "role-owner"}), 400, "custom roles only")
    page = owner.get(f"/groups/{gid}").text
    assert READER in page and "api.project.write" in page
    # the member holds the group's role: the admin API lists it with the group as its source
    held = api(web_server, "GET", f"/users/{reader.uid}/roles").json()["data"]
    assert held[-1]["id"] == rid
    assert held[-1]["assignment_sources"] == [{"principal_id": gid, "principal_type": "group"}]

    # A member of a project, from the project's Access page.
    refused_clearly(
        owner.post(f"/projects/{pid}/access/groups", {"group_id": gid, "role": "boss"}), 400, "'role' must be one of"
    )
    assert owner.post(f"/projects/{pid}/access/groups", {"group_id": gid, "role": "member"}).status_code == 303
    assert [g["group_id"] for g in api(web_server, "GET", f"/projects/{pid}/groups").json()["data"]] == [gid]
    assert by_dashboard(audits(web_server, "role.assignment.created")[-1][0])
    assert f'data-group-id="{gid}"' in owner.get(f"/projects/{pid}/access").text
    assert "Default project</a> as member" in owner.get(f"/groups/{gid}").text
    assert reader.get(f"/projects/{pid}").status_code == 200  # they reach it through the group
    assert owner.post(f"/projects/{pid}/access/groups/{gid}/remove").status_code == 303
    assert api(web_server, "GET", f"/projects/{pid}/groups").json()["data"] == []
    refused_clearly(owner.post(f"/projects/{pid}/access/groups/{gid}/remove"), 404, f"No group '{gid}'")

    assert owner.post(f"/groups/{gid}/roles/{rid}/remove").status_code == 303
    assert owner.post(f"/groups/{gid}/users/{reader.uid}/remove").status_code == 303
    assert api(web_server, "GET", f"/groups/{gid}/users").json()["data"] == []
    assert owner.post(f"/groups/{gid}", {"name": "infra"}).status_code == 303
    assert api(web_server, "GET", f"/groups/{gid}").json()["name"] == "infra"
    refused_clearly(owner.post(f"/groups/{gid}", {"name": ""}), 400, "non-empty string")
    r = owner.post(f"/groups/{gid}/delete")
    assert r.status_code == 303 and r.headers["location"] == "/roles#groups"
    assert api(web_server, "GET", f"/groups/{gid}").status_code == 404
    assert [a["type"] for a, _ in audits(web_server, "group.deleted")] == ["session"]


def _v1(srv: Any, model: str = "gpt-4o") -> httpx.Response:
    return httpx.post(
        srv.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {srv.api_key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )


def test_project_and_key_policies(owner, web_server):
    pid, kid = web_server.project_id, web_server.init["api_key_id"]
    url = f"/projects/{pid}/access"
    owner.get(url)

    # Model permissions.
    assert (
        owner.post(
            f"{url}/models", {"mode": "allow_list", "model_ids": "gpt-4o-mini\n gpt-4.1*, gpt-4o-mini"}
        ).status_code
        == 303
    )
    got = api(web_server, "GET", f"/projects/{pid}/model_permissions").json()
    assert (got["mode"], got["model_ids"]) == ("allow_list", ["gpt-4o-mini", "gpt-4.1*"])
    actor, details = audits(web_server, "model_permissions.updated")[-1]
    assert by_dashboard(actor) and details["scope"] == "project"
    assert "<code>gpt-4.1*</code>" in owner.get(url).text
    r = _v1(web_server, "gpt-4o")  # refused on /v1 at once, before any upstream
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_permitted"
    r = owner.post(f"{url}/models", {"mode": "maybe", "model_ids": "gpt-5"})
    refused_clearly(r, 400, "'mode' must be 'allow_list' or 'deny_list'.")
    assert ">gpt-5</textarea>" in r.text  # what was typed is kept
    refused_clearly(owner.post(f"{url}/models", {"mode": "deny_list", "model_ids": "x" * 300}), 400, "1 to 256")
    assert owner.post(f"{url}/models/delete").status_code == 303
    assert api(web_server, "GET", f"/projects/{pid}/model_permissions").json()["model_ids"] == []
    assert by_dashboard(audits(web_server, "model_permissions.deleted")[-1][0])

    # Hosted tools: a cleared box turns the tool off.
    on = {f"tool_{t}": "on" for t in ("code_interpreter", "file_search", "image_generation", "mcp")}
    assert owner.post(f"{url}/tools", on).status_code == 303
    tools = api(web_server, "GET", f"/projects/{pid}/hosted_tool_permissions").json()
    assert tools["web_search"] == {"enabled": False} and tools["mcp"] == {"enabled": True}
    actor, details = audits(web_server, "hosted_tool_permissions.updated")[-1]
    assert by_dashboard(actor) and details["changes_requested"]["web_search"] == {"enabled": False}
    page = owner.get(url).text
    assert re.search(r'id="tool-web_search"\s*>', page) and re.search(r'id="tool-mcp"\s*checked>', page)

    # IP allowlist.
    r = owner.post(f"{url}/ip-allowlist", {"cidrs": "10.0.0.5/8"})
    refused_clearly(r, 400, "has host bits set")
    assert ">10.0.0.5/8</textarea>" in r.text
    assert owner.post(f"{url}/ip-allowlist", {"cidrs": "203.0.113.0/24\n2001:db8::/32"}).status_code == 303
    got = api(web_server, "GET", f"/projects/{pid}/ip_allowlist").json()
    assert got["cidrs"] == ["203.0.113.0/24", "2001:db8::/32"] and got["enabled"] is True
    r = _v1(web_server)
    assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
    assert owner.post(f"{url}/ip-allowlist/lift").status_code == 303
    assert api(web_server, "GET", f"/projects/{pid}/ip_allowlist").json()["enabled"] is False
    assert [d["scope"] for _, d in audits(web_server, "ip_allowlist.deleted")] == ["project"]

    # A key's own policies.
    kurl = f"/projects/{pid}/keys/{kid}/access"
    owner.get(kurl)
    assert owner.post(f"{kurl}/models", {"mode": "deny_list", "model_ids": "gpt-4o"}).status_code == 303
    got = api(web_server, "GET", f"/projects/{pid}/api_keys/{kid}/model_permissions").json()
    assert (got["mode"], got["model_ids"]) == ("deny_list", ["gpt-4o"])
    assert audits(web_server, "model_permissions.updated")[-1][1]["scope"] == "key"
    r = _v1(web_server, "gpt-4o")
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_permitted"
    # the project's own are unchanged
    assert api(web_server, "GET", f"/projects/{pid}/model_permissions").json()["model_ids"] == []
    assert owner.post(f"{kurl}/tools", {}).status_code == 303  # every box cleared
    tools = api(web_server, "GET", f"/projects/{pid}/api_keys/{kid}/hosted_tool_permissions").json()
    assert not any(v["enabled"] for v in tools.values())
    assert owner.post(f"{kurl}/ip-allowlist", {"cidrs": "127.0.0.1"}).status_code == 303
    assert api(web_server, "GET", f"/projects/{pid}/api_keys/{kid}/ip_allowlist").json()["cidrs"] == ["127.0.0.1/32"]
    assert "groups" not in re.findall(r'<section[^>]*id="([^"]+)"', owner.get(kurl).text)
    # Every policy set, on the Access page, links to where it is set.
    page = owner.get("/access").text
    assert f'href="{kurl}"' in page and "deny_list: gpt-4o" in page and "127.0.0.1/32" in page


def test_org_ip_allowlist_guards_against_locking_yourself_out(owner, web_server, clock):
    owner.get("/access")
    assert '<code id="seen-address">127.0.0.1</code>' in owner.get("/access").text
    r = owner.post("/access/ip-allowlist", {"cidrs": "203.0.113.0/24"})
    refused_clearly(r, 400, "does not include the address this call comes from (127.0.0.1)")
    assert ">203.0.113.0/24</textarea>" in r.text
    assert api(web_server, "GET", "/ip_allowlist").json()["enabled"] is False
    refused_clearly(owner.post("/access/ip-allowlist", {"cidrs": "not-an-address"}), 400, "is not an IP address")

    assert owner.post("/access/ip-allowlist", {"cidrs": "127.0.0.1\n203.0.113.0/24"}).status_code == 303
    assert api(web_server, "GET", "/ip_allowlist").json()["cidrs"] == ["127.0.0.1/32", "203.0.113.0/24"]
    actor, details = audits(web_server, "ip_allowlist.updated")[-1]
    assert by_dashboard(actor) and details["scope"] == "org"
    other = Web(web_server, clock, address="127.0.0.2")
    try:
        assert other.get("/login").status_code == 403
        assert "<code>127.0.0.1/32</code>" in owner.get("/access").text
        assert owner.post("/access/ip-allowlist/lift").status_code == 303
        assert api(web_server, "GET", "/ip_allowlist").json()["enabled"] is False
        assert other.get("/login").status_code == 200
    finally:
        other.close()
    # Confirmed, a list that leaves the caller out is saved (the CLI on the server lifts it).
    assert owner.post("/access/ip-allowlist", {"cidrs": "203.0.113.0/24", "confirm_lockout": "on"}).status_code == 303
    assert owner.get("/access").status_code == 403
    assert api(web_server, "GET", "/ip_allowlist").status_code == 403


def _change_routes(srv: Any, gid: str, rid: str, uid: str) -> list[tuple[str, dict[str, Any]]]:
    pid, kid = srv.project_id, srv.init["api_key_id"]
    out: list[tuple[str, dict[str, Any]]] = [
        ("/roles", {"role_name": "sneaky", "permissions": ["api.project.read"]}),
        (f"/roles/{rid}", {"role_name": "sneaky", "permissions": []}),
        (f"/roles/{rid}/delete", {}),
        (f"/roles/{rid}/users", {"user_id": uid}),
        (f"/roles/{rid}/users/{uid}/remove", {}),
        ("/groups", {"name": "sneaky"}),
        (f"/groups/{gid}", {"name": "sneaky"}),
        (f"/groups/{gid}/delete", {}),
        (f"/groups/{gid}/users", {"user_id": uid}),
        (f"/groups/{gid}/users/{uid}/remove", {}),
        (f"/groups/{gid}/roles", {"role_id": rid}),
        (f"/groups/{gid}/roles/{rid}/remove", {}),
        ("/access/ip-allowlist", {"cidrs": "203.0.113.0/24", "confirm_lockout": "on"}),
        ("/access/ip-allowlist/lift", {}),
        (f"/projects/{pid}/access/groups", {"group_id": gid, "role": "owner"}),
        (f"/projects/{pid}/access/groups/{gid}/remove", {}),
    ]
    for base in (f"/projects/{pid}/access", f"/projects/{pid}/keys/{kid}/access"):
        out += [
            (f"{base}/models", {"mode": "allow_list", "model_ids": "sneaky"}),
            (f"{base}/models/delete", {}),
            (f"{base}/tools", {}),
            (f"{base}/ip-allowlist", {"cidrs": "203.0.113.0/24"}),
            (f"{base}/ip-allowlist/lift", {}),
        ]
    return out


def _state(srv: Any, gid: str) -> Any:
    pid = srv.project_id
    return [
        api(srv, "GET", p).json()
        for p in (
            "/roles",
            "/groups",
            f"/groups/{gid}/users",
            f"/groups/{gid}/roles",
            "/ip_allowlist",
            f"/projects/{pid}/groups",
            f"/projects/{pid}/model_permissions",
            f"/projects/{pid}/hosted_tool_permissions",
            f"/projects/{pid}/ip_allowlist",
        )
    ]


def test_a_reader_sees_but_cannot_change(owner, reader, web_server):
    pid, kid = web_server.project_id, web_server.init["api_key_id"]
    gid, rid = _group(owner), _role(owner, "viewer", ["api.project.read"])
    owner.get(f"/projects/{pid}/access")
    assert owner.post(f"/projects/{pid}/access/models", {"mode": "deny_list", "model_ids": "gpt-4o"}).status_code == 303
    make_member(web_server, pid, READER)
    for path in (
        "/roles",
        f"/groups/{gid}",
        "/access",
        f"/projects/{pid}/access",
        f"/projects/{pid}/keys/{kid}/access",
        "/sso",
    ):
        r = reader.get(path)
        assert r.status_code == 200, path
        assert not re.search(r'<form method="post" action="/(roles|groups|access|projects)', r.text), path
    assert "<code>gpt-4o</code>" in reader.get(f"/projects/{pid}/access").text
    assert "viewer" in reader.get("/roles").text
    before = _state(web_server, gid)
    for path, data in _change_routes(web_server, gid, rid, reader.uid):
        r = reader.post(path, data)
        assert r.status_code == 403, (path, r.text[:500])
        assert re.search(r"needs the permission api\.(organization|project)\.write", r.text), path
    assert _state(web_server, gid) == before


def test_changes_need_the_csrf_token(owner, reader, web_server):
    gid, rid = _group(owner), _role(owner, "viewer", ["api.project.read"])
    owner.get("/roles")
    before = _state(web_server, gid)
    for path, data in _change_routes(web_server, gid, rid, reader.uid):
        r = owner.post(path, data, csrf=False)
        assert r.status_code == 403 and "security token" in r.text, path
    assert _state(web_server, gid) == before


def test_the_permission_is_the_admin_apis(owner, reader, web_server):
    """The twin admin call's permission decides, from the user's effective permissions: a project writer
    (custom role) changes a project's policies but not roles or the organization's list; nobody hands out a
    permission they lack."""
    pid = web_server.project_id
    writer = _role(owner, "project-writer", ["api.project.write"])
    org_writer = _role(owner, "org-writer", ["api.organization.write"])
    assert owner.post(f"/roles/{writer}/users", {"user_id": reader.uid}).status_code == 303
    make_member(web_server, pid, READER)
    page = reader.get(f"/projects/{pid}/access").text
    assert f'action="/projects/{pid}/access/models"' in page
    assert (
        reader.post(f"/projects/{pid}/access/models", {"mode": "allow_list", "model_ids": "gpt-4o-mini"}).status_code
        == 303
    )
    assert by_dashboard(audits(web_server, "model_permissions.updated")[-1][0], READER)
    assert 'action="/roles"' not in reader.get("/roles").text
    refused_clearly(
        reader.post("/roles", {"role_name": "mine", "permissions": []}),
        403,
        "needs the permission api.organization.write",
    )
    refused_clearly(reader.post("/access/ip-allowlist", {"cidrs": "127.0.0.1"}), 403, "api.organization.write")

    # With api.organization.write but without api.project.write: no role that grants the latter.
    assert owner.post(f"/roles/{org_writer}/users", {"user_id": reader.uid}).status_code == 303
    assert owner.post(f"/roles/{writer}/users/{reader.uid}/remove").status_code == 303
    reader.get("/roles")
    refused_clearly(
        reader.post("/roles", {"role_name": "mine", "permissions": ["api.project.write"]}),
        403,
        "which you do not hold yourself",
    )
    refused_clearly(
        reader.post(f"/roles/{writer}/users", {"user_id": reader.uid}), 403, "which you do not hold yourself"
    )
    assert reader.post("/roles", {"role_name": "mine", "permissions": ["api.organization.read"]}).status_code == 303
    refused_clearly(reader.post(f"/projects/{pid}/access/tools", {}), 403, "needs the permission api.project.write")
