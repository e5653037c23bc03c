"""Effective permissions of users, read from the store (docs/members-and-roles.md "Custom roles and groups").

A user's effective permissions = their organization role's (owner | reader) + every custom role assigned
to them directly or through a group they belong to. The snapshot loads them for every user on each full
reload (any change to roles, assignments, groups or users is an opaque change on the bus, so every
instance reloads on its next event or poll), and the admin API checks each call against them.

Project-scoped roles (keyplane.members.project_roles) are loaded apart, per user and project: they count
only in a call on their own project (keyplane.admin.common), only while their holder is a member of it (the
user directly, or the group), only in an active project, and only with ``api.project.*`` permissions.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select

from keyplane.members import permissions
from keyplane.members.models import (
    CustomRole,
    GroupUser,
    ProjectGroup,
    ProjectRole,
    ProjectRoleAssignment,
    ProjectUser,
    RoleAssignment,
)
from keyplane.store.models import Project, User


def _perms(raw: str) -> list[str]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


async def load(conn: Any, user_ids: list[str] | None = None) -> dict[str, frozenset[str]]:
    """user id -> effective permissions, for every user (or those of ``user_ids``). ``conn`` is an async
    connection or session."""
    users = select(User.id, User.role)
    if user_ids is not None:
        users = users.where(User.id.in_(user_ids))
    roles = {
        r.id: _perms(r.permissions) for r in (await conn.execute(select(CustomRole.id, CustomRole.permissions))).all()
    }
    direct: dict[str, list[str]] = {}
    by_group: dict[str, list[str]] = {}
    for a in (
        await conn.execute(select(RoleAssignment.role_id, RoleAssignment.principal_type, RoleAssignment.principal_id))
    ).all():
        target = direct if a.principal_type == "user" else by_group
        target.setdefault(a.principal_id, []).append(a.role_id)
    groups_of: dict[str, list[str]] = {}
    for m in (await conn.execute(select(GroupUser.group_id, GroupUser.user_id))).all():
        groups_of.setdefault(m.user_id, []).append(m.group_id)
    out: dict[str, frozenset[str]] = {}
    for u in (await conn.execute(users)).all():
        held = list(direct.get(u.id, []))
        for g in groups_of.get(u.id, []):
            held.extend(by_group.get(g, []))
        out[u.id] = permissions.effective(u.role, (roles[r] for r in held if r in roles))
    return out


async def of_user(conn: Any, user_id: str) -> frozenset[str]:
    """One user's effective permissions, fresh from the store (empty when the user is gone)."""
    return (await load(conn, [user_id])).get(user_id, frozenset())


async def load_projects(conn: Any) -> dict[str, dict[str, frozenset[str]]]:
    """user id -> project id -> what the project roles they hold there grant (``api.project.*`` only)."""
    active = set((await conn.execute(select(Project.id).where(Project.status == "active"))).scalars())
    roles = {
        r.id: (r.project_id, [p for p in _perms(r.permissions) if p in permissions.PROJECT_PERMISSIONS])
        for r in (await conn.execute(select(ProjectRole.id, ProjectRole.project_id, ProjectRole.permissions))).all()
    }
    members = {
        (m.project_id, m.user_id)
        for m in (await conn.execute(select(ProjectUser.project_id, ProjectUser.user_id))).all()
    }
    group_in = {
        (g.project_id, g.group_id)
        for g in (await conn.execute(select(ProjectGroup.project_id, ProjectGroup.group_id))).all()
    }
    users_of: dict[str, list[str]] = {}
    for m in (await conn.execute(select(GroupUser.group_id, GroupUser.user_id))).all():
        users_of.setdefault(m.group_id, []).append(m.user_id)
    out: dict[str, dict[str, set[str]]] = {}
    for a in (
        await conn.execute(
            select(
                ProjectRoleAssignment.project_id,
                ProjectRoleAssignment.role_id,
                ProjectRoleAssignment.principal_type,
                ProjectRoleAssignment.principal_id,
            )
        )
    ).all():
        role = roles.get(a.role_id)
        if role is None or role[0] != a.project_id or a.project_id not in active:
            continue  # never a role of another project, never in an archived one
        if a.principal_type == "user":
            holders = [a.principal_id] if (a.project_id, a.principal_id) in members else []
        else:
            holders = users_of.get(a.principal_id, []) if (a.project_id, a.principal_id) in group_in else []
        for uid in holders:
            out.setdefault(uid, {}).setdefault(a.project_id, set()).update(role[1])
    return {uid: {pid: frozenset(ps) for pid, ps in by.items()} for uid, by in out.items()}
