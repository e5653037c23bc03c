"""Project API keys, service accounts, admin keys and the SHA-256 lookup."""

from __future__ import annotations

import openai
import pytest

from keyplane import keys


def _create_key(http, pid, **body):
    body.setdefault("name", "k")
    r = http.post(f"/projects/{pid}/api_keys", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_user_key_lifecycle(admin, http, server):
    pid = server.project_id
    k = _create_key(http, pid, name="ci", permissions=["api.model.request"], expires_in_seconds=3600)
    assert keys.is_valid(k["value"]) and k["value"].startswith("sk-kp-proj-")
    assert k["redacted_value"] == keys.redact(k["value"]) and k["expires_at"] is not None
    assert k["permissions"] == ["api.model.read", "api.model.request"]
    # the SDK parses list and retrieve; the value is never shown again
    listed = {x.id: x for x in admin.admin.organization.projects.api_keys.list(project_id=pid)}
    assert k["id"] in listed and listed[k["id"]].owner.type == "user"
    got = admin.admin.organization.projects.api_keys.retrieve(k["id"], project_id=pid)
    assert got.redacted_value == k["redacted_value"]
    assert k["value"] not in http.get(f"/projects/{pid}/api_keys/{k['id']}").text
    # permissions change without a new key: the SDK's update with scopes
    upd = admin.admin.organization.projects.api_keys.update(k["id"], project_id=pid, scopes=["api.files.read"])
    assert upd.id == k["id"]
    assert http.get(f"/projects/{pid}/api_keys/{k['id']}").json()["permissions"] == ["api.files.read"]
    upd = admin.admin.organization.projects.api_keys.update(k["id"], project_id=pid, scopes=[])
    assert http.get(f"/projects/{pid}/api_keys/{k['id']}").json()["permissions"] == "all"
    # delete revokes
    d = admin.admin.organization.projects.api_keys.delete(k["id"], project_id=pid)
    assert d.deleted and d.object == "organization.project.api_key.deleted"
    assert k["id"] not in [x.id for x in admin.admin.organization.projects.api_keys.list(project_id=pid)]
    row = http.get(f"/projects/{pid}/api_keys/{k['id']}").json()
    assert row["status"] == "revoked"
    types = [e.type for e in admin.admin.organization.audit_logs.list(resource_ids=[k["id"]])]
    assert types == ["api_key.deleted", "api_key.updated", "api_key.updated", "api_key.created"]


def test_rotate_with_and_without_grace(http, server):
    pid = server.project_id
    k = _create_key(http, pid, name="rot", permissions="read_only")
    r = http.post(f"/projects/{pid}/api_keys/{k['id']}/rotate", json={"grace_period_seconds": 600})
    new = r.json()
    assert r.status_code == 200 and new["value"] != k["value"] and new["name"] == "rot"
    assert new["permissions"] == "read_only"
    assert new["rotated_from"]["revoked_at"] is None and new["rotated_from"]["expires_at"] is not None
    r = http.post(f"/projects/{pid}/api_keys/{new['id']}/rotate")
    newer = r.json()
    assert newer["rotated_from"]["revoked_at"] is not None
    assert http.get(f"/projects/{pid}/api_keys/{new['id']}").json()["status"] == "revoked"
    r = http.post(f"/projects/{pid}/api_keys/{new['id']}/rotate")
    assert r.status_code == 400 and r.json()["error"]["code"] == "key_revoked"
    r = http.post(f"/projects/{pid}/api_keys/{newer['id']}/rotate", json={"grace_period_seconds": -1})
    assert r.status_code == 400


def test_suspend_resume(http, server):
    pid = server.project_id
    k = _create_key(http, pid)
    r = http.post(f"/projects/{pid}/api_keys/{k['id']}/suspend", json={"reason": "investigating"})
    assert r.json()["status"] == "suspended"
    r = http.post(f"/projects/{pid}/api_keys/{k['id']}/resume")
    assert r.json()["status"] == "active"


@pytest.mark.parametrize("perms", [["api.bogus.read"], "everything", [1, 2], {"a": 1}])
def test_unknown_scopes_refused(http, server, perms):
    r = http.post(f"/projects/{server.project_id}/api_keys", json={"name": "x", "permissions": perms})
    assert r.status_code == 400 and r.json()["error"]["param"] == "permissions"
    assert len(http.get(f"/projects/{server.project_id}/api_keys").json()["data"]) == 1


def test_keys_of_archived_project(http, server, admin):
    p = admin.admin.organization.projects.create(name="old")
    k = _create_key(http, p.id)
    admin.admin.organization.projects.archive(p.id)
    r = http.post(f"/projects/{p.id}/api_keys", json={"name": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "project_archived"
    r = http.post(f"/projects/{p.id}/api_keys/{k['id']}", json={"name": "y"})
    assert r.status_code == 400


def test_key_of_other_project_is_not_found(http, server, admin):
    p = admin.admin.organization.projects.create(name="other")
    k = _create_key(http, p.id)
    r = http.get(f"/projects/{server.project_id}/api_keys/{k['id']}")
    assert r.status_code == 404


def test_service_accounts(admin, http, server):
    pid = server.project_id
    sa = admin.admin.organization.projects.service_accounts.create(project_id=pid, name="bot")
    assert sa.role == "member" and sa.api_key is not None and keys.parse(sa.api_key.value) == "svc"
    listed = [x.id for x in admin.admin.organization.projects.service_accounts.list(project_id=pid)]
    assert sa.id in listed
    got = admin.admin.organization.projects.service_accounts.retrieve(sa.id, project_id=pid)
    assert got.name == "bot"
    keys_listed = {x.id: x for x in admin.admin.organization.projects.api_keys.list(project_id=pid)}
    assert keys_listed[sa.api_key.id].owner.type == "service_account"
    d = admin.admin.organization.projects.service_accounts.delete(sa.id, project_id=pid)
    assert d.deleted
    assert http.get(f"/projects/{pid}/api_keys/{sa.api_key.id}").json()["status"] == "revoked"
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.projects.service_accounts.retrieve(sa.id, project_id=pid)


def test_service_account_survives_user_removal(admin, http, server):
    u = http.post("/users", json={"email": "dev@example.com", "role": "owner"}).json()
    sa = admin.admin.organization.projects.service_accounts.create(project_id=server.project_id, name="svc")
    user_key = _create_key(http, server.project_id, owner_user_id=u["id"])
    admin.admin.organization.users.delete(u["id"])
    pid = server.project_id
    assert http.get(f"/projects/{pid}/api_keys/{sa.api_key.id}").json()["status"] == "active"
    assert http.get(f"/projects/{pid}/api_keys/{user_key['id']}").json()["status"] == "revoked"


def test_admin_keys(admin, http):
    made = [admin.admin.organization.admin_api_keys.create(name=f"a{i}") for i in range(3)]
    assert all(keys.parse(m.value) == "admin" for m in made)
    ids = [k.id for k in admin.admin.organization.admin_api_keys.list(limit=2)]  # auto-pagination
    assert len(ids) == 4 and all(m.id in ids for m in made)
    got = admin.admin.organization.admin_api_keys.retrieve(made[0].id)
    assert got.redacted_value == keys.redact(made[0].value) and made[0].value not in got.model_dump_json()
    d = admin.admin.organization.admin_api_keys.delete(made[0].id)
    assert d.deleted and d.object == "organization.admin_api_key.deleted"
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.admin_api_keys.retrieve("key_missing")
    r = http.post("/admin_api_keys", json={"name": "x", "expires_in_seconds": "soon"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "expires_in_seconds"


def test_lookup_by_sha256(http, server):
    k = _create_key(http, server.project_id)
    other = keys.generate("proj")
    r = http.post("/api_keys/lookup", json={"sha256": [keys.sha256_hex(k["value"]), keys.sha256_hex(other)]})
    assert r.status_code == 200
    data = r.json()["data"]
    assert [(d["id"], d["status"], d["project_id"]) for d in data] == [(k["id"], "active", server.project_id)]
    r = http.post("/api_keys/lookup", json={"sha256": ["zz"]})
    assert r.status_code == 400
    r = http.post(f"/api_keys/{k['id']}/revoke", json={"reason": "leaked: a.py:1"})
    assert r.json()["status"] == "revoked" and r.json()["revoke_reason"] == "leaked: a.py:1"
    r = http.post("/api_keys/lookup", json={"sha256": [keys.sha256_hex(k["value"])]})
    assert r.json()["data"][0]["status"] == "revoked"
