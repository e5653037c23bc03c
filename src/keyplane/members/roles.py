"""Custom roles and role assignments (docs/members-and-roles.md "Custom roles and groups"); groups are
keyplane.members.groups.

Shared by the admin API routes. Each change runs in the caller's transaction with its audit entry and a
revision bump; the tables are not "record only" on the bus, so every instance fully reloads its snapshot
(and with it every user's effective permissions, keyplane.members.grants) on the change's event.

No privilege escalation: whoever creates or widens a role, assigns a role (to a user or a group) or adds a
user to a group must hold every permission that hands out (``granted``: the caller's own effective
permissions, keyplane.admin.common.granted).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import ids
from keyplane.control import Actor, audit, bump_revision, now_s
from keyplane.domain import Conflict, Invalid, NotFound
from keyplane.members import permissions
from keyplane.members.fields import actor_user, check_description, check_name, role_perms
from keyplane.members.models import CustomRole, GroupUser, RoleAssignment
from keyplane.store.models import User

PREDEFINED = {f"role-{name}": name for name in permissions.ROLES}


# --- shapes -------------------------------------------------------------------------------------


def role_shape(r: CustomRole) -> dict[str, Any]:
    """The SDK's ``Role`` (plus the assignment listings' ``created_at``/``updated_at``/``created_by``)."""
    return {
        "object": "role",
        "id": r.id,
        "name": r.name,
        "description": r.description,
        "permissions": role_perms(r),
        "predefined_role": False,
        "resource_type": "api.organization",
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "created_by": r.created_by,
    }


def predefined_shape(role_id: str) -> dict[str, Any]:
    return next(dict(r) for r in permissions.role_objects() if r["id"] == role_id)


# --- roles --------------------------------------------------------------------------------------


async def _role_name_free(s: AsyncSession, name: str, but: str | None = None) -> None:
    if name.lower() in permissions.ROLES:
        raise Invalid(f"'{name}' is a predefined role's name.", param="role_name", code="invalid_value")
    stmt = select(CustomRole.id).where(func.lower(CustomRole.name) == name.lower())
    if but:
        stmt = stmt.where(CustomRole.id != but)
    if (await s.execute(stmt)).scalar() is not None:
        raise Conflict(f"A role named '{name}' already exists.", code="role_exists")


async def custom_role(s: AsyncSession, role_id: str) -> CustomRole:
    r = (await s.execute(select(CustomRole).where(CustomRole.id == role_id))).scalar()
    if r is None:
        raise NotFound(f"No role found with id '{role_id}'.", param="role_id")
    return r


async def role_object(s: AsyncSession, role_id: str) -> dict[str, Any]:
    if role_id in PREDEFINED:
        return predefined_shape(role_id)
    return role_shape(await custom_role(s, role_id))


def _editable(role_id: str) -> None:
    if role_id in PREDEFINED:
        raise Invalid(
            f"'{role_id}' is a predefined role: it cannot be changed or deleted.",
            param="role_id",
            code="predefined_role",
        )


async def all_roles(s: AsyncSession) -> list[dict[str, Any]]:
    """The predefined roles, then the custom ones in creation order."""
    rows = (await s.execute(select(CustomRole).order_by(CustomRole.seq))).scalars()
    return permissions.role_objects() + [role_shape(r) for r in rows]


async def create_role(
    s: AsyncSession, actor: Actor, granted: frozenset[str], *, role_name: Any, perms: Any, description: Any = None
) -> CustomRole:
    name = check_name(role_name, "role_name")
    names = permissions.check_names(perms)
    permissions.require_held(granted, names, f"create the role '{name}'")
    await _role_name_free(s, name)
    t = now_s()
    r = CustomRole(
        id=ids.new_id("role_"),
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
        {"id": r.id, "role_name": name, "permissions": names, "resource_type": "api.organization"},
        resource_id=r.id,
        at=t,
    )
    await bump_revision(s)
    return r


async def update_role(
    s: AsyncSession,
    actor: Actor,
    granted: frozenset[str],
    role_id: str,
    *,
    role_name: Any = None,
    perms: Any = None,
    description: Any = None,
    description_given: bool = False,
) -> CustomRole:
    _editable(role_id)
    r = await custom_role(s, role_id)
    changes: dict[str, Any] = {}
    if role_name is not None:
        name = check_name(role_name, "role_name")
        await _role_name_free(s, name, but=r.id)
        r.name = changes["role_name"] = name
    if perms is not None:
        names = permissions.check_names(perms)
        old = set(role_perms(r))
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
    await audit(s, actor, "role.updated", {"id": r.id, "changes_requested": changes}, resource_id=r.id)
    await bump_revision(s)
    return r


async def delete_role(s: AsyncSession, actor: Actor, role_id: str) -> int:
    """Delete a custom role and every assignment of it (users and groups lose it at once). Returns how many."""
    _editable(role_id)
    r = await custom_role(s, role_id)
    res = await s.execute(delete(RoleAssignment).where(RoleAssignment.role_id == r.id))
    n = int(getattr(res, "rowcount", 0) or 0)
    await s.delete(r)
    await audit(s, actor, "role.deleted", {"id": r.id, "assignments_removed": n}, resource_id=r.id)
    await bump_revision(s)
    return n


# --- assignments --------------------------------------------------------------------------------


async def _assignment(s: AsyncSession, role_id: str, ptype: str, pid: str) -> RoleAssignment | None:
    return (
        await s.execute(
            select(RoleAssignment).where(
                RoleAssignment.role_id == role_id,
                RoleAssignment.principal_type == ptype,
                RoleAssignment.principal_id == pid,
            )
        )
    ).scalar()


async def assign(
    s: AsyncSession, actor: Actor, granted: frozenset[str], role_id: str, ptype: str, pid: str
) -> CustomRole:
    """Assign a custom role to a user or a group (the caller must hold all its permissions)."""
    if role_id in PREDEFINED:
        raise Invalid(
            f"'{role_id}' is a predefined role: groups are assigned custom roles only (a user's "
            "organization role is set with users.update).",
            param="role_id",
            code="invalid_value",
        )
    r = await custom_role(s, role_id)
    permissions.require_held(granted, role_perms(r), f"assign the role '{r.name}'")
    if await _assignment(s, r.id, ptype, pid) is not None:
        raise Conflict(f"The {ptype} '{pid}' already holds the role '{r.id}'.", code="role_assigned")
    t = now_s()
    s.add(RoleAssignment(role_id=r.id, principal_type=ptype, principal_id=pid, created_at=t))
    await audit(
        s,
        actor,
        "role.assignment.created",
        {"id": r.id, "principal_id": pid, "principal_type": ptype, "resource_type": "api.organization"},
        resource_id=r.id,
        at=t,
    )
    await bump_revision(s)
    return r


async def unassign(s: AsyncSession, actor: Actor, role_id: str, ptype: str, pid: str) -> None:
    a = await _assignment(s, role_id, ptype, pid)
    if a is None:
        raise NotFound(f"The {ptype} '{pid}' does not hold the role '{role_id}' directly.", param="role_id")
    await s.delete(a)
    await audit(
        s,
        actor,
        "role.assignment.deleted",
        {"id": role_id, "principal_id": pid, "principal_type": ptype, "resource_type": "api.organization"},
        resource_id=role_id,
    )
    await bump_revision(s)


async def roles_of_user(s: AsyncSession, user: User) -> list[dict[str, Any]]:
    """The user's organization role, then every custom role they hold, with ``assignment_sources``
    (the user itself, and/or each group it reaches them through)."""
    sources: dict[str, list[dict[str, str]]] = {}
    for a in (
        await s.execute(
            select(RoleAssignment)
            .where(RoleAssignment.principal_type == "user", RoleAssignment.principal_id == user.id)
            .order_by(RoleAssignment.seq)
        )
    ).scalars():
        sources.setdefault(a.role_id, []).append({"principal_id": user.id, "principal_type": "user"})
    groups = select(GroupUser.group_id).where(GroupUser.user_id == user.id)
    for a in (
        await s.execute(
            select(RoleAssignment)
            .where(RoleAssignment.principal_type == "group", RoleAssignment.principal_id.in_(groups))
            .order_by(RoleAssignment.seq)
        )
    ).scalars():
        sources.setdefault(a.role_id, []).append({"principal_id": a.principal_id, "principal_type": "group"})
    org = predefined_shape(f"role-{user.role}")
    org["assignment_sources"] = [{"principal_id": user.id, "principal_type": "user"}]
    out = [org]
    rows = {r.id: r for r in (await s.execute(select(CustomRole).where(CustomRole.id.in_(list(sources))))).scalars()}
    for rid, src in sources.items():
        if rid in rows:
            out.append(role_shape(rows[rid]) | {"assignment_sources": src})
    return out


async def roles_of_group(s: AsyncSession, group_id: str) -> list[dict[str, Any]]:
    rows = (
        await s.execute(
            select(CustomRole)
            .join(RoleAssignment, RoleAssignment.role_id == CustomRole.id)
            .where(RoleAssignment.principal_type == "group", RoleAssignment.principal_id == group_id)
            .order_by(RoleAssignment.seq)
        )
    ).scalars()
    return [
        role_shape(r) | {"assignment_sources": [{"principal_id": group_id, "principal_type": "group"}]} for r in rows
    ]
