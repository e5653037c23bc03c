"""Groups as project members (projects.groups): a group's users reach the project like direct members, and
lose their user keys there the moment they stop reaching it (the group leaves the project, they leave the
group, the group is deleted)."""

from __future__ import annotations

import openai
import pytest

from tests.members.support import make_member


def _key(http, pid: str, uid: str):
    return http.post(f"/projects/{pid}/api_keys", json={"name": "k", "owner_user_id": uid})


def _status(http, pid: str, kid: str) -> str:
    return http.get(f"/projects/{pid}/api_keys/{kid}").json()["status"]


def test_a_group_reaches_a_project_and_its_users_lose_keys_when_they_stop(admin, http, server):
    pid = server.project_id
    dev = http.post("/users", json={"email": "dev@example.com", "role": "reader"}).json()
    org = admin.admin.organization
    g = org.groups.create(name="team")
    org.groups.users.create(g.id, user_id=dev["id"])
    assert _key(http, pid, dev["id"]).json()["error"]["code"] == "not_a_project_member"
    pg = org.projects.groups.create(pid, group_id=g.id, role="member")
    assert pg.object == "project.group" and pg.group_id == g.id and pg.project_id == pid
    assert pg.group_name == "team" and pg.group_type == "group"
    assert [x.group_id for x in org.projects.groups.list(pid)] == [g.id]
    assert org.projects.groups.retrieve(g.id, project_id=pid).group_id == g.id
    with pytest.raises(openai.ConflictError):
        org.projects.groups.create(pid, group_id=g.id, role="member")
    with pytest.raises(openai.BadRequestError):
        org.projects.groups.create(pid, group_id=org.groups.create(name="x").id, role="emperor")
    # reached through the group: a user key may be made for them, and it dies when they leave the group
    k1 = _key(http, pid, dev["id"]).json()
    assert _status(http, pid, k1["id"]) == "active"
    org.groups.users.delete(dev["id"], group_id=g.id)
    assert _status(http, pid, k1["id"]) == "revoked"
    # ... or when the group leaves the project
    org.groups.users.create(g.id, user_id=dev["id"])
    k2 = _key(http, pid, dev["id"]).json()
    d = org.projects.groups.delete(g.id, project_id=pid)
    assert d.deleted and d.object == "project.group.deleted"
    assert _status(http, pid, k2["id"]) == "revoked"
    with pytest.raises(openai.NotFoundError):
        org.projects.groups.retrieve(g.id, project_id=pid)
    # ... or when the group is deleted; a direct member keeps their key whatever the group does
    org.projects.groups.create(pid, group_id=g.id, role="owner")
    k3 = _key(http, pid, dev["id"]).json()
    boss = http.post("/users", json={"email": "boss@example.com", "role": "reader"}).json()
    make_member(server, pid, "boss@example.com")
    org.groups.users.create(g.id, user_id=boss["id"])
    k4 = _key(http, pid, boss["id"]).json()
    org.groups.delete(g.id)
    assert _status(http, pid, k3["id"]) == "revoked"
    assert _status(http, pid, k4["id"]) == "active"
    assert list(org.projects.groups.list(pid)) == []


def test_joining_a_project_group_needs_project_write(admin, http, server):
    from tests.members.test_custom_roles import _refused, _user_with_key

    dev, org = _user_with_key(server, http, "ow@example.com")
    people = admin.admin.organization.roles.create(
        role_name="people", permissions=["api.organization.read", "api.organization.write"]
    )
    admin.admin.organization.users.roles.create(dev["id"], role_id=people.id)
    g = admin.admin.organization.groups.create(name="on a project")
    admin.admin.organization.projects.groups.create(server.project_id, group_id=g.id, role="owner")
    _refused(lambda: org.groups.users.create(g.id, user_id=dev["id"]))
    _refused(lambda: org.projects.groups.create(server.project_id, group_id=g.id, role="owner"))
    plain = org.groups.create(name="plain")
    assert org.groups.users.create(plain.id, user_id=dev["id"]).user_id == dev["id"]
