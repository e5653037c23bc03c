"""Projects through the official SDK's admin client, and their audit entries."""

from __future__ import annotations

import openai
import pytest


def test_create_get_update_archive(admin, server):
    p = admin.admin.organization.projects.create(name="Research")
    assert p.object == "organization.project" and p.id.startswith("proj_") and p.status == "active"
    assert p.archived_at is None and p.created_at > 0
    got = admin.admin.organization.projects.retrieve(p.id)
    assert got.name == "Research"
    upd = admin.admin.organization.projects.update(p.id, name="Research 2")
    assert upd.name == "Research 2"
    arch = admin.admin.organization.projects.archive(p.id)
    assert arch.status == "archived" and arch.archived_at is not None
    # archived projects are hidden unless asked for, and cannot be changed
    ids = [x.id for x in admin.admin.organization.projects.list()]
    assert p.id not in ids
    ids = [x.id for x in admin.admin.organization.projects.list(include_archived=True)]
    assert p.id in ids
    with pytest.raises(openai.BadRequestError) as e:
        admin.admin.organization.projects.update(p.id, name="again")
    assert e.value.code == "project_archived"
    types = [e.type for e in admin.admin.organization.audit_logs.list(resource_ids=[p.id])]
    assert types == ["project.archived", "project.updated", "project.created"]


def test_auto_pagination(admin):
    made = [admin.admin.organization.projects.create(name=f"p{i}").id for i in range(7)]
    page = admin.admin.organization.projects.list(limit=3)
    assert len(page.data) == 3 and page.has_more
    seen = [p.id for p in admin.admin.organization.projects.list(limit=3)]  # iterates every page
    assert seen[1:] == made and len(seen) == 8


@pytest.mark.parametrize(
    "name,code",
    [
        (None, "missing_required_parameter"),
        ("", "invalid_value"),
        ("x" * 257, "string_above_max_length"),
        (12, "invalid_type"),
    ],
)
def test_bad_names_change_nothing(http, name, code):
    before = len(http.get("/audit_logs", params={"limit": 100}).json()["data"])
    body = {} if name is None else {"name": name}
    r = http.post("/projects", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == code and err["param"] == "name" and err["type"] == "invalid_request_error"
    assert len(http.get("/projects").json()["data"]) == 1
    assert len(http.get("/audit_logs", params={"limit": 100}).json()["data"]) == before


def test_unknown_project(admin):
    with pytest.raises(openai.NotFoundError) as e:
        admin.admin.organization.projects.retrieve("proj_nope")
    assert "proj_nope" in e.value.message


def test_malformed_json(http):
    r = http.post("/projects", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "could not parse the JSON" in r.json()["error"]["message"]
    r = http.post("/projects", content=b"[1,2]")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_body"


def test_bad_pagination_params(http):
    r = http.get("/projects", params={"limit": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    r = http.get("/projects", params={"after": "proj_missing"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "after"
