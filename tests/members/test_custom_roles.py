"""Custom roles and groups through the official SDK: CRUD, assignment, effective permissions on the very
next call, and no privilege escalation (docs/members-and-roles.md "Custom roles and groups")."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from keyplane import control

ORG_READ, ORG_WRITE = "api.organization.read", "api.organization.write"
PROJECT_READ, PROJECT_WRITE = "api.project.read", "api.project.write"


def _client(server, key: str) -> OpenAI:
    return OpenAI(base_url=server.v1, admin_api_key=key, api_key="unused", max_retries=0)


def _refused(call) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        call()
    assert e.value.status_code == 403 and e.value.code == "insufficient_permissions"


def _user_with_key(server, http, email: str, role: str = "reader", key_role: str | None = None):
    """A new organization user and an admin key of theirs (keys are created for their caller's user)."""
    user = http.post("/users", json={"email": email, "role": role}).json()

    async def make_key() -> str:
        async with server.app.runtime.write() as s:
            _, value = await control.create_admin_key(
                s,
                control.CLI_ACTOR,
                server.settings.secret_key,
                f"{email} key",
                owner_user_id=user["id"],
                role=key_role,
            )
            return value

    return user, _client(server, server.call(make_key())).admin.organization


def _types(admin: OpenAI, *types: str) -> list[str]:
    return [e.type for e in admin.admin.organization.audit_logs.list(event_types=list(types), limit=100)]


def test_custom_role_crud(admin, http):
    roles = admin.admin.organization.roles
    made = roles.create(
        role_name="Project writer", permissions=[PROJECT_WRITE, PROJECT_READ], description="Changes projects"
    )
    assert made.object == "role" and made.id.startswith("role_") and not made.predefined_role
    assert made.permissions == [PROJECT_READ, PROJECT_WRITE] and made.resource_type == "api.organization"
    assert roles.retrieve(made.id).name == "Project writer"
    assert roles.retrieve("role-owner").predefined_role
    listed = list(roles.list())
    assert [r.id for r in listed] == ["role-owner", "role-reader", made.id]
    assert [r.id for r in roles.list(limit=1)] == ["role-owner", "role-reader", made.id]  # pages by `next`
    assert next(r.id for r in roles.list(order="desc")) == made.id
    up = roles.update(made.id, role_name="Project admin", permissions=[PROJECT_READ], description=None)
    assert up.name == "Project admin" and up.permissions == [PROJECT_READ] and up.description is None
    # unknown permission names: 400 in OpenAI's error shape
    with pytest.raises(openai.BadRequestError) as e:
        roles.create(role_name="bad", permissions=["api.everything"])
    assert e.value.code == "invalid_value" and e.value.param == "permissions"
    assert "api.everything" in e.value.message
    r = http.post("/roles", json={"role_name": "bad", "permissions": [ORG_READ, "api.project.delete"]})
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError):
        roles.update(made.id, permissions=["nope"])
    with pytest.raises(openai.ConflictError):
        roles.create(role_name="project ADMIN", permissions=[PROJECT_READ])
    with pytest.raises(openai.BadRequestError):
        roles.create(role_name="owner", permissions=[PROJECT_READ])
    # the predefined roles are neither editable nor deletable
    for rid in ("role-owner", "role-reader"):
        with pytest.raises(openai.BadRequestError) as e:
            roles.update(rid, permissions=[ORG_READ])
        assert e.value.code == "predefined_role"
        with pytest.raises(openai.BadRequestError):
            roles.delete(rid)
    gone = roles.delete(made.id)
    assert gone.deleted and gone.object == "role.deleted" and gone.id == made.id
    with pytest.raises(openai.NotFoundError):
        roles.retrieve(made.id)
    assert _types(admin, "role.created", "role.updated", "role.deleted") == [
        "role.deleted",
        "role.updated",
        "role.created",
    ]


def test_custom_role_grants_on_the_next_call_and_is_taken_away_on_the_next(admin, http, server):
    dev, org = _user_with_key(server, http, "dev@example.com")
    _refused(lambda: org.projects.create(name="before"))
    writer = admin.admin.organization.roles.create(role_name="writer", permissions=[PROJECT_WRITE])
    assigned = admin.admin.organization.users.roles.create(dev["id"], role_id=writer.id)
    assert assigned.object == "user.role" and assigned.role.id == writer.id and assigned.user.role == "reader"
    assert org.projects.create(name="with role").name == "with role"  # the very next call
    held = {r.id: r for r in admin.admin.organization.users.roles.list(dev["id"])}
    assert set(held) == {"role-reader", writer.id}
    assert [(s.principal_type, s.principal_id) for s in held[writer.id].assignment_sources] == [("user", dev["id"])]
    assert admin.admin.organization.users.roles.retrieve(writer.id, user_id=dev["id"]).name == "writer"
    with pytest.raises(openai.ConflictError):
        admin.admin.organization.users.roles.create(dev["id"], role_id=writer.id)
    d = admin.admin.organization.users.roles.delete(writer.id, user_id=dev["id"])
    assert d.deleted and d.object == "user.role.deleted"
    _refused(lambda: org.projects.create(name="after"))  # the very next call
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.users.roles.delete(writer.id, user_id=dev["id"])
    assert _types(admin, "role.assignment.created", "role.assignment.deleted") == [
        "role.assignment.deleted",
        "role.assignment.created",
    ]


def test_a_reader_key_stays_read_only_whatever_its_user_holds(admin, http, server):
    dev, org = _user_with_key(server, http, "ro@example.com", key_role="reader")
    writer = admin.admin.organization.roles.create(role_name="writer", permissions=[PROJECT_WRITE, ORG_WRITE])
    admin.admin.organization.users.roles.create(dev["id"], role_id=writer.id)
    _refused(lambda: org.projects.create(name="nope"))
    _refused(lambda: org.roles.create(role_name="x", permissions=[ORG_READ]))
    assert org.projects.list().data


def test_a_project_writer_cannot_create_roles_or_make_owners(admin, http, server):
    dev, org = _user_with_key(server, http, "pw@example.com")
    writer = admin.admin.organization.roles.create(role_name="writer", permissions=[PROJECT_WRITE])
    admin.admin.organization.users.roles.create(dev["id"], role_id=writer.id)
    assert org.projects.create(name="ok").name == "ok"
    _refused(lambda: org.roles.create(role_name="mine", permissions=[ORG_WRITE]))
    _refused(lambda: org.roles.create(role_name="mine", permissions=[PROJECT_WRITE]))
    _refused(lambda: org.roles.update(writer.id, permissions=[PROJECT_WRITE, ORG_WRITE]))
    _refused(lambda: org.users.roles.create(dev["id"], role_id="role-owner"))
    _refused(lambda: org.users.update(dev["id"], role="owner"))
    _refused(lambda: org.groups.create(name="mine"))
    assert admin.admin.organization.users.retrieve(dev["id"]).role == "reader"


def test_an_organization_writer_cannot_hand_out_what_it_lacks(admin, http, server):
    dev, org = _user_with_key(server, http, "ow@example.com")
    people = admin.admin.organization.roles.create(role_name="people", permissions=[ORG_READ, ORG_WRITE])
    strong = admin.admin.organization.roles.create(role_name="strong", permissions=[PROJECT_WRITE])
    admin.admin.organization.users.roles.create(dev["id"], role_id=people.id)
    # what it holds, it may hand out
    mine = org.roles.create(role_name="auditors", permissions=[ORG_READ])
    assert mine.permissions == [ORG_READ]
    # what it lacks (api.project.write, and so owner), it may not
    _refused(lambda: org.roles.create(role_name="mine", permissions=[PROJECT_WRITE]))
    _refused(lambda: org.roles.update(mine.id, permissions=[ORG_READ, PROJECT_WRITE]))
    _refused(lambda: org.roles.update(people.id, permissions=[ORG_READ, ORG_WRITE, PROJECT_WRITE]))
    _refused(lambda: org.users.roles.create(dev["id"], role_id=strong.id))
    _refused(lambda: org.users.roles.create(dev["id"], role_id="role-owner"))
    _refused(lambda: org.users.update(dev["id"], role="owner"))
    _refused(lambda: org.invites.create(email="friend@example.com", role="owner"))
    r = http.post("/users", json={"email": "x@example.com", "role": "reader"}).json()
    _refused(lambda: org.users.update(r["id"], role="owner"))
    group = org.groups.create(name="escalators")
    _refused(lambda: org.groups.roles.create(group.id, role_id=strong.id))
    admin.admin.organization.groups.roles.create(group.id, role_id=strong.id)
    _refused(lambda: org.groups.users.create(group.id, user_id=dev["id"]))  # joining would grant project.write
    _refused(lambda: org.projects.create(name="nope"))
    assert admin.admin.organization.users.retrieve(dev["id"]).role == "reader"
    assert {r.id for r in admin.admin.organization.users.roles.list(dev["id"])} == {"role-reader", people.id}


def test_groups_crud_and_membership_takes_effect_on_the_next_call(admin, http, server):
    dev, org = _user_with_key(server, http, "grp@example.com")
    groups = admin.admin.organization.groups
    g = groups.create(name="Platform team")
    assert g.id.startswith("group_") and g.name == "Platform team" and not g.is_scim_managed
    assert g.group_type == "group"
    assert groups.retrieve(g.id).name == "Platform team"
    other = groups.create(name="Other")
    assert [x.id for x in groups.list(limit=1)] == [g.id, other.id]
    assert groups.update(g.id, name="Platform").name == "Platform"
    writer = admin.admin.organization.roles.create(role_name="writer", permissions=[PROJECT_WRITE])
    gr = groups.roles.create(g.id, role_id=writer.id)
    assert gr.object == "group.role" and gr.group.id == g.id and gr.role.id == writer.id
    assert [r.id for r in groups.roles.list(g.id)] == [writer.id]
    assert groups.roles.retrieve(writer.id, group_id=g.id).permissions == [PROJECT_WRITE]
    with pytest.raises(openai.BadRequestError):
        groups.roles.create(g.id, role_id="role-owner")  # groups hold custom roles only
    _refused(lambda: org.projects.create(name="before"))
    added = groups.users.create(g.id, user_id=dev["id"])
    assert added.object == "group.user" and added.group_id == g.id and added.user_id == dev["id"]
    assert org.projects.create(name="as a member").name == "as a member"  # the very next call
    assert [(u.id, u.email) for u in groups.users.list(g.id)] == [(dev["id"], "grp@example.com")]
    assert groups.users.retrieve(dev["id"], group_id=g.id).email == "grp@example.com"
    via = {r.id: r for r in admin.admin.organization.users.roles.list(dev["id"])}[writer.id]
    assert [(s.principal_type, s.principal_id) for s in via.assignment_sources] == [("group", g.id)]
    with pytest.raises(openai.ConflictError):
        groups.users.create(g.id, user_id=dev["id"])
    removed = groups.users.delete(dev["id"], group_id=g.id)
    assert removed.deleted and removed.object == "group.user.deleted"
    _refused(lambda: org.projects.create(name="after removal"))  # the very next call
    assert list(groups.users.list(g.id)) == []
    # back in, then the group's role is unassigned: gone on the next call too
    groups.users.create(g.id, user_id=dev["id"])
    assert org.projects.create(name="again").name == "again"
    d = groups.roles.delete(writer.id, group_id=g.id)
    assert d.deleted and d.object == "group.role.deleted"
    _refused(lambda: org.projects.create(name="role unassigned"))
    # and when the group itself goes
    groups.roles.create(g.id, role_id=writer.id)
    assert org.projects.create(name="thrice").name == "thrice"
    gone = groups.delete(g.id)
    assert gone.deleted and gone.object == "group.deleted" and gone.id == g.id
    _refused(lambda: org.projects.create(name="group deleted"))
    with pytest.raises(openai.NotFoundError):
        groups.retrieve(g.id)
    with pytest.raises(openai.NotFoundError):
        groups.users.list(g.id)
    assert set(_types(admin, "group.created", "group.updated", "group.deleted")) == {
        "group.created",
        "group.updated",
        "group.deleted",
    }


def test_a_role_deleted_while_assigned(admin, http, server):
    dev, org = _user_with_key(server, http, "del@example.com")
    writer = admin.admin.organization.roles.create(role_name="writer", permissions=[PROJECT_WRITE])
    g = admin.admin.organization.groups.create(name="team")
    admin.admin.organization.groups.roles.create(g.id, role_id=writer.id)
    admin.admin.organization.groups.users.create(g.id, user_id=dev["id"])
    admin.admin.organization.users.roles.create(dev["id"], role_id=writer.id)
    assert org.projects.create(name="held twice").name == "held twice"
    admin.admin.organization.roles.delete(writer.id)
    _refused(lambda: org.projects.create(name="deleted"))  # the very next call
    assert [r.id for r in admin.admin.organization.users.roles.list(dev["id"])] == ["role-reader"]
    assert list(admin.admin.organization.groups.roles.list(g.id)) == []
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.users.roles.create(dev["id"], role_id=writer.id)


def test_a_user_leaving_the_organization_leaves_their_groups(admin, http, server):
    dev, _ = _user_with_key(server, http, "leaver@example.com")
    g = admin.admin.organization.groups.create(name="team")
    admin.admin.organization.groups.users.create(g.id, user_id=dev["id"])
    admin.admin.organization.users.delete(dev["id"])
    assert list(admin.admin.organization.groups.users.list(g.id)) == []


def test_custom_roles_add_up(admin, http, server):
    """Effective = organization role + every custom role, direct or through any group."""
    dev, org = _user_with_key(server, http, "sum@example.com")
    a = admin.admin.organization.roles.create(role_name="a", permissions=[ORG_WRITE])
    b = admin.admin.organization.roles.create(role_name="b", permissions=[PROJECT_WRITE])
    g = admin.admin.organization.groups.create(name="team")
    admin.admin.organization.groups.roles.create(g.id, role_id=b.id)
    admin.admin.organization.groups.users.create(g.id, user_id=dev["id"])
    admin.admin.organization.users.roles.create(dev["id"], role_id=a.id)
    # now every permission: it may even hand out owner (it holds all an owner holds)
    assert org.projects.create(name="x").name == "x"
    assert org.roles.create(role_name="c", permissions=[PROJECT_WRITE, ORG_WRITE]).name == "c"
    other = http.post("/users", json={"email": "o2@example.com", "role": "reader"}).json()
    assert org.users.update(other["id"], role="owner").role == "owner"


@pytest.mark.parametrize(
    "body",
    [
        {"role_name": "x", "permissions": "api.project.read"},
        {"role_name": "x", "permissions": [1, 2]},
        {"role_name": "x", "permissions": [{"a": 1}]},
        {"role_name": "x"},
        {"role_name": ["x"], "permissions": []},
        {"role_name": "", "permissions": []},
        {"role_name": "x" * 129, "permissions": []},
        {"role_name": "x", "permissions": [], "description": 5},
        {"role_name": "x", "permissions": ["api.project.read"] * 10_000 + ["api.x"]},
    ],
)
def test_role_bodies_are_refused_in_openai_shape(http, body):
    r = http.post("/roles", json=body)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert http.get("/roles").json()["data"][-1]["id"] == "role-reader"  # nothing was made


def test_assignment_bodies_and_unknown_ids(http, server):
    uid = server.init["owner_user_id"]
    assert http.post(f"/users/{uid}/roles", json={}).status_code == 400
    assert http.post(f"/users/{uid}/roles", json={"role_id": ["role-owner"]}).status_code == 400
    assert http.post(f"/users/{uid}/roles", json={"role_id": "role_missing"}).status_code == 404
    assert http.post("/groups", json={"name": 3}).status_code == 400
    g = http.post("/groups", json={"name": "g"}).json()
    assert http.post(f"/groups/{g['id']}/users", json={"user_id": "user-missing"}).status_code == 404
    assert http.post(f"/groups/{g['id']}/users", json={}).status_code == 400
    assert http.post(f"/groups/{g['id']}/roles", json={"role_id": "role_missing"}).status_code == 404
    assert http.post("/groups/group_missing/users", json={"user_id": uid}).status_code == 404
    assert http.delete(f"/groups/{g['id']}/users/{uid}").status_code == 404
    assert http.get("/roles", params={"after": "role_missing"}).status_code == 400
    assert http.get("/roles", params={"order": "sideways"}).status_code == 400
    assert http.get("/roles", params={"limit": "0"}).status_code == 400
