"""Project-scoped custom roles (docs/members-and-roles.md "Project roles").

``projects.roles``: a project's own custom roles, holding ``api.project.*`` permissions only.
``projects.users.roles`` / ``projects.groups.roles``: such a role held in its project by a direct project
member, or by a group that is a project member (every user of the group holds it there).

What they grant counts only in calls on their own project (keyplane.admin.common, from the snapshot that
keyplane.members.grants.load_projects fills): never organization-wide, never in another project. A role id of
another project is unknown here (404). Whoever creates, widens or assigns a project role must hold every
permission it hands out, in that project (the caller's ``granted``, as for organization custom roles).

The rows go with what they hang on: deleting a role deletes its assignments; a member (user or group) leaving
the project, a user leaving the organization, a group being deleted, and the project being archived (the
platform's projects are archived, not deleted) drop the assignments in the same transaction.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control, ids
from keyplane.control import Actor, audit, bump_revision, now_s
from keyplane.domain import Conflict, Invalid, NotFound
from keyplane.members import ops, permissions
from keyplane.members.fields import actor_user, check_description, check_name
from keyplane.members.models import GroupUser, ProjectGroup, ProjectRole, ProjectRoleAssignment

RESOURCE_TYPE = "api.project"
RESERVED = ("owner", "member", "reader")  # the project membership roles and the organization's


def perms_of(r: ProjectRole) -> list[str]:
    value = orjson.loads(r.permissions)
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


def shape(r: ProjectRole) -> dict[str, Any]:
    """The SDK's ``Role`` (``resource_type: "api.project"``), plus the assignment listings' ``created_at``,
    ``updated_at``, ``created_by`` and keyplane's ``project_id``."""
    return {
        "object": "role",
        "id": r.id,
        "name": r.name,
        "description": r.description,
        "permissions": perms_of(r),
        "predefined_role": False,
        "resource_type": RESOURCE_TYPE,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "created_by": r.created_by,
        "project_id": r.project_id,
    }


def _check_perms(value: Any) -> list[str]:
    return permissions.check_names(value, allowed=permissions.PROJECT_PERMISSIONS, what="A project role's permissions")


async def get_role(s: AsyncSession, project_id: str, role_id: str) -> ProjectRole:
    """The role ``role_id`` of this project (404 for an unknown one, or one of another project)."""
    await control.get_project(s, project_id)
    r = (
        await s.execute(select(ProjectRole).where(ProjectRole.id == role_id, ProjectRole.project_id == project_id))
    ).scalar()
    if r is None:
        raise NotFound(f"No role found with id '{role_id}' in project '{project_id}'.", param="role_id")
    return r


async def list_roles(s: AsyncSession, project_id: str) -> list[dict[str, Any]]:
    await control.get_project(s, project_id)
    rows = await s.execute(select(ProjectRole).where(ProjectRole.project_id == project_id).order_by(ProjectRole.seq))
    return [shape(r) for r in rows.scalars()]


async def _name_free(s: AsyncSession, project_id: str, name: str, but: str | None = None) -> None:
    if name.lower() in RESERVED:
        raise Invalid(f"'{name}' is a predefined role's name.", param="role_name", code="invalid_value")
    stmt = select(ProjectRole.id).where(
        ProjectRole.project_id == project_id, func.lower(ProjectRole.name) == name.lower()
    )
    if but:
        stmt = stmt.where(ProjectRole.id != but)
    if (await s.execute(stmt)).scalar() is not None:
        raise Conflict(f"A role named '{name}' already exists in project '{project_id}'.", code="role_exists")


async def create_role(
    s: AsyncSession,
    actor: Actor,
    granted: frozenset[str],
    project_id: str,
    *,
    role_name: Any,
    perms: Any,
    description: Any = None,
) -> ProjectRole:
    p = await control.get_project(s, project_id)
    control.ensure_active(p)
    name = check_name(role_name, "role_name")
    names = _check_perms(perms)
    permissions.require_held(granted, names, f"create the role '{name}'")
    await _name_free(s, p.id, name)
    t = now_s()
    r = ProjectRole(
        id=ids.new_id("role_"),
        project_id=p.id,
        name=name,
        description=check_description(description),
        permissions=orjson.dumps(names).decode(),
        created_at=t,
        updated_at=t,
        created_by=actor_user(actor),
    )
    s.add(r)
    await audit(
        s,
        actor,
        "role.created",
        {"id": r.id, "role_name": name, "permissions": names, "resource_id": p.id, "resource_type": RESOURCE_TYPE},
        project_id=p.id,
        resource_id=r.id,
        at=t,
    )
    await bump_revision(s)
    return r


async def update_role(
    s: AsyncSession,
    actor: Actor,
    granted: frozenset[str],
    project_id: str,
    role_id: str,
    *,
    role_name: Any = None,
    perms: Any = None,
    description: Any = None,
    description_given: bool = False,
) -> ProjectRole:
    control.ensure_active(await control.get_project(s, project_id))
    r = await get_role(s, project_id, role_id)
    changes: dict[str, Any] = {}
    if role_name is not None:
        name = check_name(role_name, "role_name")
        await _name_free(s, project_id, name, but=r.id)
        r.name = changes["role_name"] = name
    if perms is not None:
        names = _check_perms(perms)
        old = set(perms_of(r))
        added, removed = sorted(set(names) - old), sorted(old - set(names))
        permissions.require_held(granted, added, f"widen the role '{r.name}'")
        r.permissions = orjson.dumps(names).decode()
        changes["permissions_added"], changes["permissions_removed"] = added, removed
    if description_given:
        r.description = changes["description"] = check_description(description)
    if not changes:
        raise Invalid(
            "Nothing to update: give 'role_name', 'permissions' and/or 'description'.",
            code="missing_required_parameter",
        )
    r.updated_at = now_s()
    changes |= {"resource_id": project_id, "resource_type": RESOURCE_TYPE}
    await audit(
        s,
        actor,
        "role.updated",
        {"id": r.id, "changes_requested": changes},
        project_id=project_id,
        resource_id=r.id,
        at=r.updated_at,
    )
    await bump_revision(s)
    return r


async def delete_role(s: AsyncSession, actor: Actor, project_id: str, role_id: str) -> int:
    """Delete a project role and every assignment of it (its holders lose it at once). Returns how many."""
    r = await get_role(s, project_id, role_id)
    res = await s.execute(delete(ProjectRoleAssignment).where(ProjectRoleAssignment.role_id == r.id))
    n = int(getattr(res, "rowcount", 0) or 0)
    await s.delete(r)
    await audit(
        s,
        actor,
        "role.deleted",
        {"id": r.id, "assignments_removed": n, "resource_id": project_id, "resource_type": RESOURCE_TYPE},
        project_id=project_id,
        resource_id=r.id,
    )
    await bump_revision(s)
    return n


# --- assignments --------------------------------------------------------------------------------


async def _member(s: AsyncSession, project_id: str, ptype: str, pid: str) -> None:
    """404 unless ``pid`` is a member of the project: a user directly (projects.users), or a group."""
    if ptype == "user":
        await ops.get_project_user(s, project_id, pid)
        return
    await control.get_project(s, project_id)
    if (
        await s.execute(
            select(ProjectGroup.seq).where(ProjectGroup.project_id == project_id, ProjectGroup.group_id == pid)
        )
    ).first() is None:
        raise NotFound(f"No group '{pid}' in project '{project_id}'.", param="group_id")


async def _assignment(
    s: AsyncSession, project_id: str, role_id: str, ptype: str, pid: str
) -> ProjectRoleAssignment | None:
    return (
        await s.execute(
            select(ProjectRoleAssignment).where(
                ProjectRoleAssignment.project_id == project_id,
                ProjectRoleAssignment.role_id == role_id,
                ProjectRoleAssignment.principal_type == ptype,
                ProjectRoleAssignment.principal_id == pid,
            )
        )
    ).scalar()


def _assignment_audit(role_id: str, project_id: str, ptype: str, pid: str) -> dict[str, Any]:
    return {
        "id": role_id,
        "principal_id": pid,
        "principal_type": ptype,
        "resource_id": project_id,
        "resource_type": RESOURCE_TYPE,
    }


async def assign(
    s: AsyncSession, actor: Actor, granted: frozenset[str], project_id: str, role_id: Any, ptype: str, pid: str
) -> ProjectRole:
    """Give a project member (a user, or a group) one of the project's roles; the caller must hold all its
    permissions in this project."""
    if not isinstance(role_id, str) or not role_id:
        raise Invalid("Give 'role_id'.", param="role_id", code="missing_required_parameter")
    control.ensure_active(await control.get_project(s, project_id))
    await _member(s, project_id, ptype, pid)
    r = await get_role(s, project_id, role_id)
    permissions.require_held(granted, perms_of(r), f"assign the role '{r.name}'")
    if await _assignment(s, project_id, r.id, ptype, pid) is not None:
        raise Conflict(
            f"The {ptype} '{pid}' already holds the role '{r.id}' in project '{project_id}'.", code="role_assigned"
        )
    t = now_s()
    s.add(
        ProjectRoleAssignment(project_id=project_id, role_id=r.id, principal_type=ptype, principal_id=pid, created_at=t)
    )
    await audit(
        s,
        actor,
        "role.assignment.created",
        _assignment_audit(r.id, project_id, ptype, pid),
        project_id=project_id,
        resource_id=r.id,
        at=t,
    )
    await bump_revision(s)
    return r


async def unassign(s: AsyncSession, actor: Actor, project_id: str, role_id: str, ptype: str, pid: str) -> None:
    await control.get_project(s, project_id)
    a = await _assignment(s, project_id, role_id, ptype, pid)
    if a is None:
        raise NotFound(
            f"The {ptype} '{pid}' does not hold the role '{role_id}' in project '{project_id}' directly.",
            param="role_id",
        )
    await s.delete(a)
    await audit(
        s,
        actor,
        "role.assignment.deleted",
        _assignment_audit(role_id, project_id, ptype, pid),
        project_id=project_id,
        resource_id=role_id,
    )
    await bump_revision(s)


async def _held(s: AsyncSession, project_id: str, sources: dict[str, list[dict[str, str]]]) -> list[dict[str, Any]]:
    rows = {
        r.id: r
        for r in (
            await s.execute(
                select(ProjectRole).where(ProjectRole.project_id == project_id, ProjectRole.id.in_(list(sources)))
            )
        ).scalars()
    }
    return [shape(rows[rid]) | {"assignment_sources": src} for rid, src in sources.items() if rid in rows]


async def roles_of_user(s: AsyncSession, project_id: str, user_id: str) -> list[dict[str, Any]]:
    """The project roles a user holds in the project, with ``assignment_sources``: the user (as a direct
    member), and/or each group of theirs that is a project member."""
    await control.get_project(s, project_id)
    await control.get_user(s, user_id)
    sources: dict[str, list[dict[str, str]]] = {}
    if await ops.membership(s, project_id, user_id) is not None:
        for a in (
            await s.execute(
                select(ProjectRoleAssignment)
                .where(
                    ProjectRoleAssignment.project_id == project_id,
                    ProjectRoleAssignment.principal_type == "user",
                    ProjectRoleAssignment.principal_id == user_id,
                )
                .order_by(ProjectRoleAssignment.seq)
            )
        ).scalars():
            sources.setdefault(a.role_id, []).append({"principal_id": user_id, "principal_type": "user"})
    groups = (
        select(GroupUser.group_id)
        .join(ProjectGroup, ProjectGroup.group_id == GroupUser.group_id)
        .where(GroupUser.user_id == user_id, ProjectGroup.project_id == project_id)
    )
    for a in (
        await s.execute(
            select(ProjectRoleAssignment)
            .where(
                ProjectRoleAssignment.project_id == project_id,
                ProjectRoleAssignment.principal_type == "group",
                ProjectRoleAssignment.principal_id.in_(groups),
            )
            .order_by(ProjectRoleAssignment.seq)
        )
    ).scalars():
        sources.setdefault(a.role_id, []).append({"principal_id": a.principal_id, "principal_type": "group"})
    return await _held(s, project_id, sources)


async def roles_of_group(s: AsyncSession, project_id: str, group_id: str) -> list[dict[str, Any]]:
    """The project roles a group (a project member) holds in the project."""
    await _member(s, project_id, "group", group_id)
    sources: dict[str, list[dict[str, str]]] = {}
    for a in (
        await s.execute(
            select(ProjectRoleAssignment)
            .where(
                ProjectRoleAssignment.project_id == project_id,
                ProjectRoleAssignment.principal_type == "group",
                ProjectRoleAssignment.principal_id == group_id,
            )
            .order_by(ProjectRoleAssignment.seq)
        )
    ).scalars():
        sources.setdefault(a.role_id, []).append({"principal_id": group_id, "principal_type": "group"})
    return await _held(s, project_id, sources)


# --- what goes with a member, a user, a group, a project ---------------------------------------------------


async def forget_member(s: AsyncSession, project_id: str, ptype: str, pid: str) -> None:
    """A user or a group left the project: the project roles it held there go."""
    await s.execute(
        delete(ProjectRoleAssignment).where(
            ProjectRoleAssignment.project_id == project_id,
            ProjectRoleAssignment.principal_type == ptype,
            ProjectRoleAssignment.principal_id == pid,
        )
    )


async def forget_principal(s: AsyncSession, ptype: str, pid: str) -> None:
    """A user left the organization, or a group was deleted: its project roles go, in every project."""
    await s.execute(
        delete(ProjectRoleAssignment).where(
            ProjectRoleAssignment.principal_type == ptype, ProjectRoleAssignment.principal_id == pid
        )
    )


async def forget_project(s: AsyncSession, project_id: str) -> None:
    """The project was archived: nobody holds its roles any more (the roles stay, to be read)."""
    await s.execute(delete(ProjectRoleAssignment).where(ProjectRoleAssignment.project_id == project_id))
