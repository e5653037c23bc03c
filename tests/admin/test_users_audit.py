"""Users and the audit log filters."""

from __future__ import annotations

import openai
import pytest


def test_users(admin, http):
    u = http.post("/users", json={"email": "Reader@Example.com", "role": "reader"}).json()
    assert u["object"] == "organization.user" and u["email"] == "reader@example.com"
    r = http.post("/users", json={"email": "reader@example.com"})
    assert r.status_code == 409
    listed = [x.email for x in admin.admin.organization.users.list()]
    assert listed == ["owner@example.com", "reader@example.com"]
    got = admin.admin.organization.users.retrieve(u["id"])
    assert got.role == "reader"
    upd = admin.admin.organization.users.update(u["id"], role="owner")
    assert upd.role == "owner"
    with pytest.raises(openai.BadRequestError):
        admin.admin.organization.users.update(u["id"], role="emperor")
    d = admin.admin.organization.users.delete(u["id"])
    assert d.deleted
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.users.retrieve(u["id"])


def test_last_owner_is_kept(admin):
    (owner,) = list(admin.admin.organization.users.list())
    with pytest.raises(openai.BadRequestError) as e:
        admin.admin.organization.users.update(owner.id, role="reader")
    assert e.value.code == "last_owner"
    with pytest.raises(openai.BadRequestError):
        admin.admin.organization.users.delete(owner.id)


def test_audit_filters_and_paging(admin, http, server):
    p = admin.admin.organization.projects.create(name="audited")
    admin.admin.organization.projects.update(p.id, name="audited 2")
    logs = list(admin.admin.organization.audit_logs.list(project_ids=[p.id]))
    assert [e.type for e in logs] == ["project.updated", "project.created"]
    assert logs[0].actor.type == "api_key"
    assert logs[0].project.id == p.id and logs[0].project.name == "audited 2"
    only = list(admin.admin.organization.audit_logs.list(event_types=["project.updated"]))
    assert [e.project.id for e in only] == [p.id]
    newest = logs[0].effective_at
    assert list(admin.admin.organization.audit_logs.list(effective_at={"gt": newest})) == []
    assert len(list(admin.admin.organization.audit_logs.list(effective_at={"gte": newest - 3600}))) >= 2
    page1 = admin.admin.organization.audit_logs.list(limit=2)
    everything = [e.id for e in admin.admin.organization.audit_logs.list(limit=2)]
    assert everything[:2] == [e.id for e in page1.data] and len(everything) == len(set(everything)) > 4
    r = http.get("/audit_logs", params={"effective_at[gt]": "yesterday"})
    assert r.status_code == 400
    actor_filtered = list(admin.admin.organization.audit_logs.list(actor_ids=[server.init["admin_key_id"]]))
    assert {e.type for e in actor_filtered} == {"project.created", "project.updated"}
