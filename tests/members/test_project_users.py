"""Project members through the official SDK: add, list, role, removal revokes their keys in that project."""

from __future__ import annotations

import time

import openai
import pytest
from openai import OpenAI


def _user(http, email: str, role: str = "reader") -> dict:
    r = http.post("/users", json={"email": email, "role": role})
    assert r.status_code == 200, r.text
    return r.json()


def _key(http, pid: str, **body) -> dict:
    return http.post(f"/projects/{pid}/api_keys", json={"name": "k", **body})


def _refused_with_401(server, value: str) -> bool:
    client = OpenAI(base_url=server.v1, api_key=value, max_retries=0)
    deadline = time.monotonic() + 5  # the snapshot applies the change from the bus, in-process: at once
    while time.monotonic() < deadline:
        try:
            client.models.list()
        except openai.AuthenticationError:
            return True
        except openai.APIError:
            pass
        time.sleep(0.05)
    return False


def test_project_users_crud(admin, http, server):
    pid = server.project_id
    dev = _user(http, "dev@example.com")
    ops = _user(http, "ops@example.com")
    users = admin.admin.organization.projects.users
    added = users.create(project_id=pid, user_id=dev["id"], role="member")
    assert added.object == "organization.project.user" and added.id == dev["id"] and added.role == "member"
    assert added.email == "dev@example.com"
    by_email = users.create(project_id=pid, email="OPS@example.com", role="owner")
    assert by_email.id == ops["id"] and by_email.role == "owner"
    with pytest.raises(openai.ConflictError):
        users.create(project_id=pid, user_id=dev["id"], role="member")
    with pytest.raises(openai.BadRequestError):
        users.create(project_id=pid, user_id=dev["id"], role="emperor")
    with pytest.raises(openai.NotFoundError):
        users.create(project_id=pid, user_id="user_missing", role="member")
    assert [u.id for u in users.list(project_id=pid, limit=1)] == [dev["id"], ops["id"]]  # auto-paging
    assert users.retrieve(dev["id"], project_id=pid).role == "member"
    assert users.update(dev["id"], project_id=pid, role="owner").role == "owner"
    other = admin.admin.organization.projects.create(name="other")
    with pytest.raises(openai.NotFoundError):
        users.retrieve(dev["id"], project_id=other.id)
    d = users.delete(dev["id"], project_id=pid)
    assert d.deleted and d.object == "organization.project.user.deleted" and d.id == dev["id"]
    with pytest.raises(openai.NotFoundError):
        users.retrieve(dev["id"], project_id=pid)
    types = [e.type for e in admin.admin.organization.audit_logs.list(project_ids=[pid], resource_ids=[dev["id"]])]
    assert types == ["user.deleted", "user.updated", "user.added"]


def test_keys_only_for_members_and_removal_revokes_them(admin, http, server):
    pid = server.project_id
    other = admin.admin.organization.projects.create(name="other")
    dev = _user(http, "dev@example.com")
    refused = _key(http, pid, owner_user_id=dev["id"])
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "not_a_project_member"
    admin.admin.organization.projects.users.create(project_id=pid, user_id=dev["id"], role="member")
    admin.admin.organization.projects.users.create(project_id=other.id, user_id=dev["id"], role="member")
    here = _key(http, pid, owner_user_id=dev["id"]).json()
    there = _key(http, other.id, owner_user_id=dev["id"]).json()
    sa = admin.admin.organization.projects.service_accounts.create(project_id=pid, name="svc")
    admin.admin.organization.projects.users.delete(dev["id"], project_id=pid)
    assert http.get(f"/projects/{pid}/api_keys/{here['id']}").json()["status"] == "revoked"
    assert http.get(f"/projects/{other.id}/api_keys/{there['id']}").json()["status"] == "active"
    assert http.get(f"/projects/{pid}/api_keys/{sa.api_key.id}").json()["status"] == "active"
    assert _refused_with_401(server, here["value"])
    # gone from the project: no new key there either
    assert _key(http, pid, owner_user_id=dev["id"]).status_code == 400
    # leaving the organization drops every membership
    admin.admin.organization.users.delete(dev["id"])
    assert list(admin.admin.organization.projects.users.list(project_id=other.id)) == []


def test_org_owner_reaches_every_project(admin, http, server):
    boss = _user(http, "boss@example.com", role="owner")
    p = admin.admin.organization.projects.create(name="any")
    assert _key(http, p.id, owner_user_id=boss["id"]).status_code == 200


def test_demoted_owner_loses_keys_outside_their_projects(admin, http, server):
    boss = _user(http, "boss@example.com", role="owner")
    mine = admin.admin.organization.projects.create(name="mine")
    admin.admin.organization.projects.users.create(project_id=mine.id, user_id=boss["id"], role="owner")
    kept = _key(http, mine.id, owner_user_id=boss["id"]).json()
    lost = _key(http, server.project_id, owner_user_id=boss["id"]).json()
    admin.admin.organization.users.update(boss["id"], role="reader")
    assert http.get(f"/projects/{mine.id}/api_keys/{kept['id']}").json()["status"] == "active"
    assert http.get(f"/projects/{server.project_id}/api_keys/{lost['id']}").json()["status"] == "revoked"
    assert _refused_with_401(server, lost["value"])
