"""Groups, their users, and groups as project members (docs/members-and-roles.md "Custom roles and groups").

Shared by the admin API routes and the dashboard. Each change runs in the caller's transaction with its audit
entry and a revision bump (every instance reloads its snapshot on the change's event). Adding a user to a group
hands them its roles, so the caller must hold every permission those give (``granted``); the roles themselves
and their assignments are keyplane.members.roles.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control, ids
from keyplane.control import Actor, audit, bump_revision, now_s
from keyplane.domain import Conflict, Invalid, NotFound
from keyplane.members import ops, permissions
from keyplane.members.fields import check_name, role_perms
from keyplane.members.models import CustomRole, Group, GroupUser, ProjectGroup, RoleAssignment
from keyplane.store.models import Project, User


def group_shape(g: Group) -> dict[str, Any]:
    """The SDK's ``Group`` (and the ``group`` of ``group.role``: ``object``, ``scim_managed``)."""
    return {
        "object": "group",
        "id": g.id,
        "name": g.name,
        "created_at": g.created_at,
        "group_type": "group",
        "is_scim_managed": False,
        "scim_managed": False,
    }


def group_user_shape(u: User) -> dict[str, Any]:
    return {
        "object": "organization.group.user",
        "id": u.id,
        "name": u.name,
        "email": u.email,
        "user_type": "user",
        "is_service_account": False,
    }


async def get_group(s: AsyncSession, group_id: str) -> Group:
    g = (await s.execute(select(Group).where(Group.id == group_id))).scalar()
    if g is None:
        raise NotFound(f"No group found with id '{group_id}'.", param="group_id")
    return g


async def all_groups(s: AsyncSession) -> list[Group]:
    """Every group, in creation order."""
    return list((await s.execute(select(Group).order_by(Group.seq))).scalars())


async def create_group(s: AsyncSession, actor: Actor, name: Any) -> Group:
    g = Group(id=ids.new_id("group_"), name=check_name(name, "name"), created_at=now_s())
    s.add(g)
    await audit(
        s, actor, "group.created", {"id": g.id, "data": {"group_name": g.name}}, resource_id=g.id, at=g.created_at
    )
    await bump_revision(s)
    return g


async def update_group(s: AsyncSession, actor: Actor, group_id: str, name: Any) -> Group:
    g = await get_group(s, group_id)
    g.name = check_name(name, "name")
    await audit(s, actor, "group.updated", {"id": g.id, "changes_requested": {"group_name": g.name}}, resource_id=g.id)
    await bump_revision(s)
    return g


async def delete_group(s: AsyncSession, actor: Actor, group_id: str) -> None:
    """Delete a group: its members lose its roles at once."""
    g = await get_group(s, group_id)
    members = list((await s.execute(select(GroupUser.user_id).where(GroupUser.group_id == g.id))).scalars())
    await s.execute(delete(GroupUser).where(GroupUser.group_id == g.id))
    await s.execute(
        delete(RoleAssignment).where(RoleAssignment.principal_type == "group", RoleAssignment.principal_id == g.id)
    )
    await s.execute(delete(ProjectGroup).where(ProjectGroup.group_id == g.id))
    from keyplane.members import project_roles  # and the project roles it held

    await project_roles.forget_principal(s, "group", g.id)
    await s.delete(g)
    t = now_s()
    await ops.revoke_if_unreachable(s, members, t)  # its projects are no longer reached through it
    await audit(s, actor, "group.deleted", {"id": g.id}, resource_id=g.id, at=t)
    await bump_revision(s)


async def group_permissions(s: AsyncSession, group_id: str) -> list[str]:
    rows = (
        await s.execute(
            select(CustomRole)
            .join(RoleAssignment, RoleAssignment.role_id == CustomRole.id)
            .where(RoleAssignment.principal_type == "group", RoleAssignment.principal_id == group_id)
        )
    ).scalars()
    return sorted({p for r in rows for p in role_perms(r)})


async def group_member(s: AsyncSession, group_id: str, user_id: str) -> GroupUser | None:
    return (
        await s.execute(select(GroupUser).where(GroupUser.group_id == group_id, GroupUser.user_id == user_id))
    ).scalar()


async def add_group_user(
    s: AsyncSession, actor: Actor, granted: frozenset[str], group_id: str, user_id: Any
) -> GroupUser:
    """Add a user to a group: they gain its roles, so the caller must hold all their permissions."""
    g = await get_group(s, group_id)
    if not isinstance(user_id, str) or not user_id:
        raise Invalid("Give 'user_id' of an organization user.", param="user_id", code="missing_required_parameter")
    user = await control.get_user(s, user_id)
    wanted = set(await group_permissions(s, g.id))
    if (await s.execute(select(ProjectGroup.seq).where(ProjectGroup.group_id == g.id).limit(1))).first():
        wanted.add(permissions.PROJECT_WRITE)  # the group is a project member: joining it joins projects
    permissions.require_held(granted, wanted, f"add a user to the group '{g.name}'")
    if await group_member(s, g.id, user.id) is not None:
        raise Conflict(f"User '{user.id}' is already a member of group '{g.id}'.", code="user_exists")
    m = GroupUser(group_id=g.id, user_id=user.id, added_at=now_s())
    s.add(m)
    await audit(
        s,
        actor,
        "group.updated",
        {"id": g.id, "changes_requested": {"user_added": user.id}},
        resource_id=g.id,
        at=m.added_at,
    )
    await bump_revision(s)
    return m


async def remove_group_user(s: AsyncSession, actor: Actor, group_id: str, user_id: str) -> None:
    g = await get_group(s, group_id)
    m = await group_member(s, g.id, user_id)
    if m is None:
        raise NotFound(f"User '{user_id}' is not a member of group '{g.id}'.", param="user_id")
    await s.delete(m)
    t = now_s()
    await ops.revoke_if_unreachable(s, [user_id], t)  # the group's projects are no longer reached through it
    await audit(
        s, actor, "group.updated", {"id": g.id, "changes_requested": {"user_removed": user_id}}, resource_id=g.id, at=t
    )
    await bump_revision(s)


async def group_users(s: AsyncSession, group_id: str) -> list[User]:
    await get_group(s, group_id)
    rows = await s.execute(
        select(User)
        .join(GroupUser, GroupUser.user_id == User.id)
        .where(GroupUser.group_id == group_id)
        .order_by(GroupUser.seq)
    )
    return list(rows.scalars())


async def forget_user(s: AsyncSession, user_id: str) -> None:
    """A user leaving the organization leaves every group and loses every custom role held directly."""
    await s.execute(delete(GroupUser).where(GroupUser.user_id == user_id))
    await s.execute(
        delete(RoleAssignment).where(RoleAssignment.principal_type == "user", RoleAssignment.principal_id == user_id)
    )
    from keyplane.members import project_roles  # and every project role held directly

    await project_roles.forget_principal(s, "user", user_id)


# --- groups as project members (projects.groups) ---------------------------------------------------


def project_group_shape(pg: ProjectGroup, g: Group) -> dict[str, Any]:
    """The SDK's ``ProjectGroup`` (plus keyplane's ``role``: the project role its members reach it with)."""
    return {
        "object": "project.group",
        "project_id": pg.project_id,
        "group_id": g.id,
        "group_name": g.name,
        "group_type": "group",
        "created_at": pg.created_at,
        "role": pg.role,
    }


async def project_group(s: AsyncSession, project_id: str, group_id: str) -> tuple[ProjectGroup, Group]:
    await control.get_project(s, project_id)
    row = (
        await s.execute(
            select(ProjectGroup, Group)
            .join(Group, Group.id == ProjectGroup.group_id)
            .where(ProjectGroup.project_id == project_id, ProjectGroup.group_id == group_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"No group '{group_id}' in project '{project_id}'.", param="group_id")
    return row[0], row[1]


async def project_groups(s: AsyncSession, project_id: str) -> list[tuple[ProjectGroup, Group]]:
    await control.get_project(s, project_id)
    rows = await s.execute(
        select(ProjectGroup, Group)
        .join(Group, Group.id == ProjectGroup.group_id)
        .where(ProjectGroup.project_id == project_id)
        .order_by(ProjectGroup.seq)
    )
    return [(pg, g) for pg, g in rows.all()]


async def projects_of_group(s: AsyncSession, group_id: str) -> list[tuple[ProjectGroup, Project]]:
    """The projects a group is a member of, in the order it joined them."""
    rows = await s.execute(
        select(ProjectGroup, Project)
        .join(Project, Project.id == ProjectGroup.project_id)
        .where(ProjectGroup.group_id == group_id)
        .order_by(ProjectGroup.seq)
    )
    return [(pg, p) for pg, p in rows.all()]


async def add_project_group(
    s: AsyncSession, actor: Actor, project_id: str, group_id: Any, role: Any
) -> tuple[ProjectGroup, Group]:
    p = await control.get_project(s, project_id)
    control.ensure_active(p)
    if not isinstance(group_id, str) or not group_id:
        raise Invalid("Give 'group_id'.", param="group_id", code="missing_required_parameter")
    g = await get_group(s, group_id)
    role = ops.check_project_role(role)
    if (
        await s.execute(select(ProjectGroup.seq).where(ProjectGroup.project_id == p.id, ProjectGroup.group_id == g.id))
    ).first():
        raise Conflict(f"Group '{g.id}' is already a member of project '{p.id}'.", code="group_exists")
    pg = ProjectGroup(project_id=p.id, group_id=g.id, role=role, created_at=now_s())
    s.add(pg)
    await audit(
        s,
        actor,
        "role.assignment.created",
        {
            "id": f"project-{role}",
            "principal_id": g.id,
            "principal_type": "group",
            "resource_id": p.id,
            "resource_type": "api.project",
        },
        project_id=p.id,
        resource_id=g.id,
        at=pg.created_at,
    )
    await bump_revision(s)
    return pg, g


async def remove_project_group(s: AsyncSession, actor: Actor, project_id: str, group_id: str) -> None:
    """The group leaves the project: its users who no longer reach it lose their user keys there at once."""
    pg, g = await project_group(s, project_id, group_id)
    members = list((await s.execute(select(GroupUser.user_id).where(GroupUser.group_id == g.id))).scalars())
    await s.delete(pg)
    from keyplane.members import project_roles  # the project roles it held there go with it

    await project_roles.forget_member(s, project_id, "group", g.id)
    t = now_s()
    await ops.revoke_if_unreachable(s, members, t)
    await audit(
        s,
        actor,
        "role.assignment.deleted",
        {
            "id": f"project-{pg.role}",
            "principal_id": g.id,
            "principal_type": "group",
            "resource_id": project_id,
            "resource_type": "api.project",
        },
        project_id=project_id,
        resource_id=g.id,
        at=t,
    )
    await bump_revision(s)
