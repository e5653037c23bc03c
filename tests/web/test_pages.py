"""Dashboard pages and changes over plain HTTP: CSRF, roles, keys shown once, escaping, CSV."""

from __future__ import annotations

import re

import orjson
import pytest
from sqlalchemy import select

from keyplane.store.models import ApiKey, AuditLog
from tests.web.conftest import Web, csrf_of

PAGES = ("/", "/projects", "/usage", "/credit", "/kill-switch", "/audit", "/users", "/account")


def _keys(server, project_id):
    async def go():
        async with server.app.runtime.read() as s:
            return list(
                (await s.execute(select(ApiKey).where(ApiKey.project_id == project_id).order_by(ApiKey.seq))).scalars()
            )

    return server.call(go())


def test_every_page_renders(owner, web_server):
    for path in (*PAGES, f"/projects/{web_server.project_id}"):
        r = owner.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert r.headers["cache-control"] == "no-store"
    r = owner.get("/usage.csv")
    assert r.status_code == 200 and r.text.startswith("bucket_start_utc,")
    assert owner.get("/static/htmx.min.js").status_code == 200
    assert owner.get("/nope").status_code == 404
    assert owner.c.get("/v1").status_code == 404 and owner.c.get("/v1").json()["error"]["code"] == "unknown_url"


def test_post_without_csrf_is_refused(owner, web_server):
    r = owner.post("/projects", {"name": "sneaky"}, csrf=False)
    assert r.status_code == 403 and "security token" in r.text
    r = owner.post("/projects", {"name": "sneaky", "csrf_token": "x" * 32}, csrf=False)
    assert r.status_code == 403
    # With the token in the htmx header instead of the form, it is accepted.
    r = owner.c.post("/projects", data={"name": "via header"}, headers={"X-CSRF-Token": owner.csrf})
    assert r.status_code == 303
    assert "sneaky" not in owner.get("/projects").text


def test_create_key_shown_once_then_never(owner, web_server):
    pid = web_server.project_id
    owner.get(f"/projects/{pid}")
    r = owner.post(
        f"/projects/{pid}/keys",
        {"name": "etl", "kind": "user", "mode": "restricted", "area_model": "request", "area_files": "read"},
        headers={"HX-Request": "true"},
    )
    assert r.status_code == 200, r.text
    value = re.search(r'id="secret-value"[^>]*value="([^"]+)"', r.text).group(1)
    assert value.startswith("sk-kp-proj-") and "will not be shown again" in r.text
    assert r.headers["cache-control"] == "no-store"
    row = next(k for k in _keys(web_server, pid) if k.name == "etl")
    assert sorted(orjson.loads(row.permissions)) == ["api.files.read", "api.model.read", "api.model.request"]
    for path in (*PAGES, f"/projects/{pid}", f"/projects/{pid}/keys/{row.id}"):
        assert value not in owner.get(path).text, path
    assert value[-4:] in owner.get(f"/projects/{pid}").text  # the redacted form is shown

    # Service-account key, read only; then edit permissions without a new value.
    r = owner.post(f"/projects/{pid}/keys", {"name": "bot", "kind": "service_account", "mode": "read_only"})
    assert r.status_code == 200 and "sk-kp-svc-" in r.text and "<dialog" in r.text
    sa = next(k for k in _keys(web_server, pid) if k.name == "bot")
    assert orjson.loads(sa.permissions) == "read_only"
    r = owner.post(f"/projects/{pid}/keys/{sa.id}/permissions", {"mode": "all", "name": "bot"})
    assert r.status_code == 303
    sa2 = next(k for k in _keys(web_server, pid) if k.id == sa.id)
    assert orjson.loads(sa2.permissions) == "all" and sa2.digest == sa.digest

    # A restricted key with nothing allowed is refused (it would mean "all").
    r = owner.post(f"/projects/{pid}/keys", {"name": "empty", "mode": "restricted"})
    assert r.status_code == 400 and "at least one area" in r.text


def test_rotate_suspend_resume_revoke(owner, web_server):
    pid = web_server.project_id
    owner.get(f"/projects/{pid}")
    owner.post(f"/projects/{pid}/keys", {"name": "rot", "mode": "all"})
    k = next(x for x in _keys(web_server, pid) if x.name == "rot")
    r = owner.post(f"/projects/{pid}/keys/{k.id}/rotate")
    assert r.status_code == 200 and "sk-kp-proj-" in r.text
    new = next(x for x in _keys(web_server, pid) if x.name == "rot" and x.revoked_at is None)
    assert new.id != k.id
    assert owner.post(f"/projects/{pid}/keys/{new.id}/suspend").status_code == 303
    assert "suspended" in owner.get(f"/projects/{pid}").text
    assert owner.post(f"/projects/{pid}/keys/{new.id}/resume").status_code == 303
    assert owner.post(f"/projects/{pid}/keys/{new.id}/revoke").status_code == 303
    assert next(x for x in _keys(web_server, pid) if x.id == new.id).revoked_at is not None


def test_changes_are_audited_with_the_session_actor(owner, web_server):
    owner.get("/projects")
    owner.post("/projects", {"name": "Audited"})

    async def go():
        async with web_server.app.runtime.read() as s:
            return (
                (
                    await s.execute(
                        select(AuditLog).where(AuditLog.type == "project.created").order_by(AuditLog.seq.desc())
                    )
                )
                .scalars()
                .first()
            )

    a = web_server.call(go())
    actor = orjson.loads(a.actor)
    assert actor["type"] == "session" and actor["session"]["user"]["email"] == "owner@example.com"
    page = owner.get("/audit?type=project.created").text
    assert "Audited" in page and "owner@example.com (dashboard" in page


def test_names_are_escaped(owner):
    owner.get("/projects")
    r = owner.post("/projects", {"name": '<script>alert("x")</script>'})
    page = owner.get(r.headers["location"]).text
    assert '<script>alert("x")</script>' not in page and "&lt;script&gt;" in page


def test_csv_export_defuses_formulas(owner, web_server):
    from keyplane.web.pages import _csv_safe

    assert _csv_safe("=HYPERLINK()") == "'=HYPERLINK()" and _csv_safe("ok") == "ok"


def test_forms_are_bounded(owner):
    owner.get("/projects")
    r = owner.post("/projects", {"name": "x" * 70_000})
    assert r.status_code == 413
    r = owner.post("/projects", {"name": "x" * 5000})
    assert r.status_code == 400


@pytest.fixture
def reader(owner, web_server, clock):
    r = owner.post("/users", {"email": "reader@example.com", "role": "reader"})
    password = re.search(r'id="secret-value"[^>]*value="([^"]+)"', r.text).group(1)
    w = Web(web_server, clock)
    w.sign_in("reader@example.com", password)
    yield w
    w.close()


def test_reader_sees_everything_changes_nothing(reader, web_server):
    pid = web_server.project_id
    from tests.members.support import make_member  # a reader sees only the projects they are a member of

    make_member(web_server, pid, "reader@example.com")
    for path in (*PAGES, f"/projects/{pid}"):
        r = reader.get(path)
        assert r.status_code == 200, path
    project = reader.get(f"/projects/{pid}").text
    assert "Create key" not in project and "Archive project" not in project and "Revoke" not in project
    assert "Add user" not in reader.get("/users").text
    assert "New project" not in reader.get("/projects").text
    key = _keys(web_server, pid)[0]
    posts = [
        "/projects",
        f"/projects/{pid}/archive",
        f"/projects/{pid}/keys",
        f"/projects/{pid}/spend-limit",
        f"/projects/{pid}/keys/{key.id}/revoke",
        f"/projects/{pid}/keys/{key.id}/suspend",
        f"/projects/{pid}/keys/{key.id}/rotate",
        f"/projects/{pid}/keys/{key.id}/permissions",
        f"/projects/{pid}/rate-limits/rl-x",
        "/users",
        "/users/user-x/role",
        "/users/user-x/reset-2fa",
        "/users/user-x/remove",
    ]
    for path in posts:
        r = reader.post(path, {"name": "x", "mode": "all", "role": "owner", "email": "z@example.com"})
        assert r.status_code == 403, path
    assert _keys(web_server, pid)[0].revoked_at is None
    # A reader may still change their own password.
    r = reader.post("/account/password", {"current": "wrong", "new": "n" * 12, "again": "n" * 12})
    assert r.status_code == 400


def test_account_password_change(owner, web_server):
    owner.get("/account")
    r = owner.post(
        "/account/password",
        {"current": "correct horse battery staple", "new": "a new password here", "again": "a new password here"},
    )
    assert r.status_code == 303
    assert owner.get("/").status_code == 200  # this session goes on
    csrf_of(owner.get("/account").text)


def test_credit_and_org_spend_limit(owner):
    page = owner.get("/credit").text
    if "Add prepaid credit" not in page:
        assert "not available" in page
        return
    r = owner.post("/credit/grants", {"amount": "100", "note": "<b>invoice</b>"})
    assert r.status_code == 303
    page = owner.get("/credit").text
    assert "$100.00" in page and "&lt;b&gt;invoice&lt;/b&gt;" in page
    assert owner.post("/credit/spend-limit", {"amount": "1,000", "enforce": "on"}).status_code == 303
    assert "$1,000.00" in owner.get("/credit").text
    assert owner.post("/credit/spend-limit", {"amount": ""}).status_code == 303
    assert "$1,000.00" not in owner.get("/credit").text
    assert owner.post("/credit/grants", {"amount": "ten"}).status_code == 400
