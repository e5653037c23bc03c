"""Project-scoped roles through the official SDK (projects.roles, projects.users.roles, projects.groups.roles):
CRUD in the SDK's shapes, what they grant (api.project.* in their own project, on the very next call, and nowhere
else), and the assignments going with what they hang on (docs/members-and-roles.md "Project roles")."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest
from sqlalchemy import func, select

from keyplane import control, domain
from keyplane.members import grants, ops, project_roles
from keyplane.members.models import ProjectRole, ProjectRoleAssignment
from tests.members.support import make_member, user_with_key
from tests.members.test_fleet_roles import _known, _until, pair  # noqa: F401  (two instances, one store)

ORG_READ, ORG_WRITE = "api.organization.read", "api.organization.write"
PROJECT_READ, PROJECT_WRITE = "api.project.read", "api.project.write"


def _refused(call, code: str = "insufficient_permissions") -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        call()
    assert e.value.status_code == 403 and e.value.code == code


def _sdk(server, key: str):
    return openai.OpenAI(base_url=server.v1, admin_api_key=key, api_key="unused", max_retries=0).admin.organization


def _can_write(org, pid: str) -> bool:
    """Whether the key may change the project (a rename is api.project.write on that project)."""
    try:
        org.projects.update(pid, name="renamed")
        return True
    except openai.PermissionDeniedError as e:
        assert e.code == "insufficient_permissions"
        return False


def _assignments(server) -> int:
    async def count() -> int:
        async with server.app.runtime.read() as s:
            return int((await s.execute(select(func.count()).select_from(ProjectRoleAssignment))).scalar() or 0)

    return int(server.call(count()))


def test_project_role_crud_in_the_sdk_shapes(admin, http, server):
    org = admin.admin.organization
    pid, other = server.project_id, org.projects.create(name="other").id
    made = org.projects.roles.create(
        pid, role_name="Deployer", permissions=[PROJECT_WRITE, PROJECT_READ], description="Ships things"
    )
    assert made.object == "role" and made.id.startswith("role_") and not made.predefined_role
    assert made.resource_type == "api.project" and made.permissions == [PROJECT_READ, PROJECT_WRITE]
    assert made.model_extra["project_id"] == pid
    assert org.projects.roles.retrieve(made.id, project_id=pid).name == "Deployer"
    second = org.projects.roles.create(pid, role_name="Viewer", permissions=[PROJECT_READ])
    assert [r.id for r in org.projects.roles.list(pid)] == [made.id, second.id]
    assert [r.id for r in org.projects.roles.list(pid, limit=1)] == [made.id, second.id]  # pages by `next`
    assert next(iter(org.projects.roles.list(pid, order="desc"))).id == second.id
    up = org.projects.roles.update(
        made.id, project_id=pid, role_name="Releaser", permissions=[PROJECT_READ], description=None
    )
    assert (up.name, up.permissions, up.description) == ("Releaser", [PROJECT_READ], None)
    # the same calls in keyplane's admin namespace
    assert [r["id"] for r in http.get(f"/projects/{pid}/roles").json()["data"]] == [made.id, second.id]
    # organization permissions are not a project role's to hold
    for perms in ([ORG_WRITE], [PROJECT_READ, ORG_READ], ["api.everything"]):
        with pytest.raises(openai.BadRequestError) as e:
            org.projects.roles.create(pid, role_name="bad", permissions=perms)
        assert e.value.code == "invalid_value" and e.value.param == "permissions"
    with pytest.raises(openai.BadRequestError):
        org.projects.roles.update(made.id, project_id=pid, permissions=[ORG_WRITE])
    with pytest.raises(openai.ConflictError):
        org.projects.roles.create(pid, role_name="releaser", permissions=[PROJECT_READ])
    with pytest.raises(openai.BadRequestError):
        org.projects.roles.create(pid, role_name="Owner", permissions=[PROJECT_READ])
    # names are the project's own; ids never reach another project, nor the organization's roles
    assert org.projects.roles.create(other, role_name="Releaser", permissions=[PROJECT_READ]).name == "Releaser"
    for call in (
        lambda: org.projects.roles.retrieve(made.id, project_id=other),
        lambda: org.projects.roles.update(made.id, project_id=other, role_name="x"),
        lambda: org.projects.roles.delete(made.id, project_id=other),
        lambda: org.roles.retrieve(made.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert made.id not in [r.id for r in org.roles.list()]
    gone = org.projects.roles.delete(made.id, project_id=pid)
    assert gone.deleted and gone.object == "role.deleted" and gone.id == made.id
    with pytest.raises(openai.NotFoundError):
        org.projects.roles.retrieve(made.id, project_id=pid)
    events = list(
        org.audit_logs.list(event_types=["role.created", "role.updated", "role.deleted"], resource_ids=[made.id])
    )
    assert [e.type for e in events] == ["role.deleted", "role.updated", "role.created"]
    assert events[-1].role_created.resource_type == "api.project" and events[-1].role_created.resource_id == pid
    assert events[-1].project.id == pid
    assert events[1].role_updated.changes_requested.permissions_removed == [PROJECT_WRITE]


def test_a_project_role_grants_in_its_project_only(admin, http, server):
    org = admin.admin.organization
    a, b = server.project_id, org.projects.create(name="b").id
    dev, theirs = user_with_key(server, http, "dev@example.com")
    make_member(server, a, "dev@example.com")
    make_member(server, b, "dev@example.com")
    assert not _can_write(theirs, a)
    writer = org.projects.roles.create(a, role_name="writer", permissions=[PROJECT_WRITE])
    held = org.projects.users.roles.create(dev["id"], project_id=a, role_id=writer.id)
    assert held.object == "user.role" and held.role.id == writer.id and held.user.id == dev["id"]
    assert held.role.resource_type == "api.project"
    assert _can_write(theirs, a)  # the very next call
    assert theirs.projects.service_accounts.create(a, name="bot").name == "bot"
    # nowhere else: not another project, not a call outside one project, not the organization
    assert not _can_write(theirs, b)
    _refused(lambda: theirs.projects.service_accounts.create(b, name="bot"))
    _refused(lambda: theirs.projects.create(name="new"))
    _refused(lambda: theirs.invites.create(email="friend@example.com", role="reader"))
    _refused(lambda: theirs.roles.create(role_name="mine", permissions=[PROJECT_WRITE]))
    _refused(lambda: theirs.projects.roles.create(b, role_name="mine", permissions=[PROJECT_WRITE]))
    # its holder may pass on what it holds there, and only there
    assert theirs.projects.roles.create(a, role_name="deputy", permissions=[PROJECT_WRITE]).name == "deputy"
    listed = list(org.projects.users.roles.list(dev["id"], project_id=a))
    assert [r.id for r in listed] == [writer.id]
    assert [(s.principal_type, s.principal_id) for s in listed[0].assignment_sources] == [("user", dev["id"])]
    assert org.projects.users.roles.retrieve(writer.id, project_id=a, user_id=dev["id"]).name == "writer"
    assert list(org.projects.users.roles.list(dev["id"], project_id=b)) == []
    with pytest.raises(openai.ConflictError):
        org.projects.users.roles.create(dev["id"], project_id=a, role_id=writer.id)
    d = org.projects.users.roles.delete(writer.id, project_id=a, user_id=dev["id"])
    assert d.deleted and d.object == "user.role.deleted"
    assert not _can_write(theirs, a)  # the very next call
    with pytest.raises(openai.NotFoundError):
        org.projects.users.roles.retrieve(writer.id, project_id=a, user_id=dev["id"])
    with pytest.raises(openai.NotFoundError):
        org.projects.users.roles.delete(writer.id, project_id=a, user_id=dev["id"])
    events = list(
        org.audit_logs.list(
            event_types=["role.assignment.created", "role.assignment.deleted"], resource_ids=[writer.id]
        )
    )
    assert [e.type for e in events] == ["role.assignment.deleted", "role.assignment.created"]
    created = events[1].role_assignment_created
    assert (created.principal_type, created.principal_id, created.resource_type, created.resource_id) == (
        "user",
        dev["id"],
        "api.project",
        a,
    )


def test_a_reader_key_stays_read_only_in_the_project(admin, http, server):
    org = admin.admin.organization
    pid = server.project_id
    dev, theirs = user_with_key(server, http, "ro@example.com", key_role="reader")
    make_member(server, pid, "ro@example.com")
    writer = org.projects.roles.create(pid, role_name="writer", permissions=[PROJECT_WRITE])
    org.projects.users.roles.create(dev["id"], project_id=pid, role_id=writer.id)
    assert not _can_write(theirs, pid)
    assert theirs.projects.retrieve(pid).id == pid


def test_assignments_need_a_project_member_and_a_role_of_that_project(admin, http, server):
    org = admin.admin.organization
    a, b = server.project_id, org.projects.create(name="b").id
    dev = http.post("/users", json={"email": "nm@example.com", "role": "reader"}).json()
    role_a = org.projects.roles.create(a, role_name="writer", permissions=[PROJECT_WRITE])
    role_b = org.projects.roles.create(b, role_name="writer", permissions=[PROJECT_WRITE])
    g = org.groups.create(name="team")
    with pytest.raises(openai.NotFoundError):  # not a member of the project
        org.projects.users.roles.create(dev["id"], project_id=a, role_id=role_a.id)
    with pytest.raises(openai.NotFoundError):  # the group is not a member of the project
        org.projects.groups.roles.create(g.id, project_id=a, role_id=role_a.id)
    make_member(server, a, "nm@example.com")
    org.projects.groups.create(a, group_id=g.id, role="member")
    for rid in (role_b.id, "role-owner", "role_missing"):  # another project's role, an organization role
        with pytest.raises(openai.NotFoundError):
            org.projects.users.roles.create(dev["id"], project_id=a, role_id=rid)
        with pytest.raises(openai.NotFoundError):
            org.projects.groups.roles.create(g.id, project_id=a, role_id=rid)
    with pytest.raises(openai.NotFoundError):  # and a project role is not an organization role
        org.users.roles.create(dev["id"], role_id=role_a.id)
    assert http.post(f"/projects/{a}/users/{dev['id']}/roles", json={}).status_code == 400
    assert http.post(f"/projects/{a}/users/{dev['id']}/roles", json={"role_id": ["x"]}).status_code == 400
    assert http.get(f"/projects/{a}/roles", params={"order": "sideways"}).status_code == 400
    assert http.get("/projects/proj_missing/roles").status_code == 404
    assert _assignments(server) == 0  # nothing was made


def test_a_groups_project_role_reaches_its_users_in_that_project(admin, http, server):
    org = admin.admin.organization
    pid = server.project_id
    dev, theirs = user_with_key(server, http, "grp@example.com")
    writer = org.projects.roles.create(pid, role_name="writer", permissions=[PROJECT_WRITE])
    g = org.groups.create(name="team")
    org.groups.users.create(g.id, user_id=dev["id"])
    org.projects.groups.create(pid, group_id=g.id, role="member")
    gr = org.projects.groups.roles.create(g.id, project_id=pid, role_id=writer.id)
    assert gr.object == "group.role" and gr.group.id == g.id and gr.role.id == writer.id
    assert not gr.group.scim_managed
    assert _can_write(theirs, pid)  # the very next call
    assert [r.id for r in org.projects.groups.roles.list(g.id, project_id=pid)] == [writer.id]
    assert org.projects.groups.roles.retrieve(writer.id, project_id=pid, group_id=g.id).permissions == [PROJECT_WRITE]
    via = list(org.projects.users.roles.list(dev["id"], project_id=pid))
    assert [(s.principal_type, s.principal_id) for s in via[0].assignment_sources] == [("group", g.id)]
    org.groups.users.delete(dev["id"], group_id=g.id)
    assert not _can_write(theirs, pid)  # left the group: the very next call
    org.groups.users.create(g.id, user_id=dev["id"])
    assert _can_write(theirs, pid)
    d = org.projects.groups.roles.delete(writer.id, project_id=pid, group_id=g.id)
    assert d.deleted and d.object == "group.role.deleted"
    assert not _can_write(theirs, pid)
    assert list(org.projects.groups.roles.list(g.id, project_id=pid)) == []
    # the group leaving the project takes its project roles along: coming back does not restore them
    org.projects.groups.roles.create(g.id, project_id=pid, role_id=writer.id)
    org.projects.groups.delete(g.id, project_id=pid)
    org.projects.groups.create(pid, group_id=g.id, role="member")
    assert list(org.projects.groups.roles.list(g.id, project_id=pid)) == []
    assert not _can_write(theirs, pid)
    # and the group being deleted does too
    org.projects.groups.roles.create(g.id, project_id=pid, role_id=writer.id)
    assert _assignments(server) == 1
    org.groups.delete(g.id)
    assert _assignments(server) == 0
    assert not _can_write(theirs, pid)


def test_assignments_go_with_the_member_the_role_the_user_and_the_project(admin, http, server):
    org = admin.admin.organization
    pid = org.projects.create(name="doomed").id
    dev, theirs = user_with_key(server, http, "gone@example.com")
    make_member(server, pid, "gone@example.com")
    writer = org.projects.roles.create(pid, role_name="writer", permissions=[PROJECT_WRITE])
    # the member leaves the project: coming back does not restore the role
    org.projects.users.roles.create(dev["id"], project_id=pid, role_id=writer.id)
    assert _can_write(theirs, pid)
    org.projects.users.delete(dev["id"], project_id=pid)
    assert not _can_write(theirs, pid)
    make_member(server, pid, "gone@example.com")
    assert list(org.projects.users.roles.list(dev["id"], project_id=pid)) == []
    assert not _can_write(theirs, pid)
    # the role is deleted
    org.projects.users.roles.create(dev["id"], project_id=pid, role_id=writer.id)
    assert _can_write(theirs, pid)
    assert _assignments(server) == 1
    org.projects.roles.delete(writer.id, project_id=pid)
    assert _assignments(server) == 0
    assert not _can_write(theirs, pid)
    # the project is archived (the platform never deletes one): nobody holds its roles any more
    again = org.projects.roles.create(pid, role_name="writer", permissions=[PROJECT_WRITE])
    org.projects.users.roles.create(dev["id"], project_id=pid, role_id=again.id)
    org.projects.archive(pid)
    assert list(org.projects.users.roles.list(dev["id"], project_id=pid)) == []
    assert [r.id for r in org.projects.roles.list(pid)] == [again.id]  # still readable
    with pytest.raises(openai.BadRequestError) as e:
        org.projects.users.roles.create(dev["id"], project_id=pid, role_id=again.id)
    assert e.value.code == "project_archived"
    # the user leaves the organization
    other = org.projects.create(name="other").id
    make_member(server, other, "gone@example.com")
    third = org.projects.roles.create(other, role_name="writer", permissions=[PROJECT_WRITE])
    org.projects.users.roles.create(dev["id"], project_id=other, role_id=third.id)
    assert _assignments(server) == 1
    org.users.delete(dev["id"])
    assert _assignments(server) == 0


def test_no_grant_beyond_the_callers_own_permissions_in_the_project(server):
    """Today every user holds api.project.read, so over HTTP a project writer is never short of a project
    permission: the check is pinned here, on the store, for the day the table grows."""
    pid = server.project_id
    read, write, both = frozenset({PROJECT_READ}), frozenset({PROJECT_WRITE}), frozenset({PROJECT_READ, PROJECT_WRITE})
    who = control.CLI_ACTOR

    def refused(e: pytest.ExceptionInfo[domain.Forbidden]) -> None:  # the admin API answers it with a 403
        assert domain.status_of(e.value) == 403 and e.value.code == "insufficient_permissions"

    async def go() -> None:
        async with server.app.runtime.write() as s:
            user = await control.find_user(s, "owner@example.com")
            await ops.add_project_user(s, who, pid, role="member", user_id=user.id)
            with pytest.raises(domain.Forbidden) as e:
                await project_roles.create_role(s, who, write, pid, role_name="r", perms=[PROJECT_READ])
            refused(e)
            r = await project_roles.create_role(s, who, both, pid, role_name="w", perms=[PROJECT_WRITE])
            with pytest.raises(domain.Forbidden) as e:  # widening it
                await project_roles.update_role(s, who, write, pid, r.id, perms=[PROJECT_READ, PROJECT_WRITE])
            refused(e)
            with pytest.raises(domain.Forbidden) as e:  # handing it out
                await project_roles.assign(s, who, read, pid, r.id, "user", user.id)
            refused(e)
            await project_roles.update_role(s, who, read, pid, r.id, perms=[])  # narrowing needs nothing held

    server.call(go())


def test_a_tampered_row_never_grants_organization_permissions(server):
    """Project grants are read as api.project.* only, in an active project, for its members: rows written
    around the API (an organization permission, another project's role, a non-member, an archived project)
    grant nothing more."""
    pid = server.project_id

    async def go() -> dict[str, dict[str, frozenset[str]]]:
        async with server.app.runtime.write() as s:
            user = await control.find_user(s, "owner@example.com")
            await ops.add_project_user(s, control.CLI_ACTOR, pid, role="member", user_id=user.id)
            old = await control.create_project(s, control.CLI_ACTOR, "old")
            await ops.add_project_user(s, control.CLI_ACTOR, old.id, role="member", user_id=user.id)
            old.status = "archived"
            rows = [
                ("role_tampered", pid, [ORG_WRITE, PROJECT_WRITE]),
                ("role_elsewhere", "proj_other", [PROJECT_READ]),
                ("role_old", old.id, [PROJECT_WRITE]),
            ]
            for rid, in_project, perms in rows:
                s.add(
                    ProjectRole(
                        id=rid,
                        project_id=in_project,
                        name=rid,
                        permissions=orjson.dumps(perms).decode(),
                        created_at=0,
                        updated_at=0,
                    )
                )
            for rid, in_project, who in (
                ("role_tampered", pid, user.id),
                ("role_elsewhere", pid, user.id),
                ("role_old", old.id, user.id),
                ("role_tampered", pid, "user-stranger"),
            ):
                s.add(
                    ProjectRoleAssignment(
                        project_id=in_project, role_id=rid, principal_type="user", principal_id=who, created_at=0
                    )
                )
            await s.flush()
            loaded = await grants.load_projects(s)
            return {uid: dict(by) for uid, by in loaded.items()}

    loaded = server.call(go())
    assert list(loaded.values()) == [{pid: frozenset({PROJECT_WRITE})}]


@pytest.mark.postgres
@pytest.mark.slow
def test_a_project_role_reaches_the_other_instance_within_a_second(pair):  # noqa: F811  (the fixture)
    """Two instances, one PostgreSQL and one Redis (the revision poll slowed to 30 s): a project role given or
    taken on one is enforced by the other within a second, through the bus."""
    a, b = pair
    org = _sdk(a, a.admin_key)
    with httpx.Client(base_url=a.v1 + "/organization", headers={"Authorization": f"Bearer {a.admin_key}"}) as http:
        dev = http.post("/users", json={"email": "fleet@example.com", "role": "reader"}).json()

    async def make_key() -> str:
        async with a.app.runtime.write() as s:
            await ops.add_project_user(s, control.CLI_ACTOR, a.project_id, role="member", user_id=dev["id"])
            _, value = await control.create_admin_key(
                s, control.CLI_ACTOR, a.settings.secret_key, "fleet", owner_user_id=dev["id"]
            )
            return value

    on_b = _sdk(b, a.call(make_key()))
    _until(lambda: _known(on_b), "the new admin key")
    assert not _can_write(on_b, a.project_id)
    writer = org.projects.roles.create(a.project_id, role_name="writer", permissions=[PROJECT_WRITE])
    org.projects.users.roles.create(dev["id"], project_id=a.project_id, role_id=writer.id)
    _until(lambda: _can_write(on_b, a.project_id), "a project role assignment")
    org.projects.users.delete(dev["id"], project_id=a.project_id)
    _until(lambda: not _can_write(on_b, a.project_id), "the member leaving the project")
