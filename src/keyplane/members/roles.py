"""Custom roles, groups and role assignments (docs/members-and-roles.md "Custom roles and groups").

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

from keyplane import control, ids
from keyplane.control import Actor, audit, bump_revision, now_s
from keyplane.errors import bad_request, conflict, not_found
from keyplane.members import ops, permissions
from keyplane.members.models import CustomRole, Group, GroupUser, ProjectGroup, RoleAssignment
from keyplane.store.models import User

PREDEFINED = {f"role-{name}": name for name in permissions.ROLES}
MAX_NAME = 128


# --- shapes -------------------------------------------------------------------------------------


def role_perms(r: CustomRole) -> list[str]:
    value = orjson.loads(r.permissions)
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


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


def page_of(items: list[dict[str, Any]], after: str | None, limit: int, order: str | None) -> dict[str, Any]:
    """A ``SyncNextCursorPage`` (``data``, ``has_more``, ``next``) over a small, fully read list."""
    if order == "desc":
        items = items[::-1]
    elif order not in (None, "asc"):
        raise bad_request("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    if after:
        at = next((i for i, x in enumerate(items) if x["id"] == after), None)
        if at is None:
            raise bad_request(f"No object with id '{after}' to page from.", param="after")
        items = items[at + 1 :]
    shown, more = items[:limit], len(items) > limit
    return {
        "object": "list",
        "data": shown,
        "has_more": more,
        "next": shown[-1]["id"] if more and shown else None,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
    }


def _actor_user(actor: Actor) -> str | None:
    user = (actor.detail or {}).get("user")
    return user.get("id") if isinstance(user, dict) else None


# --- roles --------------------------------------------------------------------------------------


def _check_name(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_NAME:
        raise bad_request(
            f"'{param}' must be a non-empty string of at most {MAX_NAME} characters.", param=param, code="invalid_value"
        )
    return value.strip()


def _check_description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 1000:
        raise bad_request(
            "'description' must be a string of at most 1000 characters.", param="description", code="invalid_value"
        )
    return value


async def _role_name_free(s: AsyncSession, name: str, but: str | None = None) -> None:
    if name.lower() in permissions.ROLES:
        raise bad_request(f"'{name}' is a predefined role's name.", param="role_name", code="invalid_value")
    stmt = select(CustomRole.id).where(func.lower(CustomRole.name) == name.lower())
    if but:
        stmt = stmt.where(CustomRole.id != but)
    if (await s.execute(stmt)).scalar() is not None:
        raise conflict(f"A role named '{name}' already exists.", code="role_exists")


async def custom_role(s: AsyncSession, role_id: str) -> CustomRole:
    r = (await s.execute(select(CustomRole).where(CustomRole.id == role_id))).scalar()
    if r is None:
        raise not_found(f"No role found with id '{role_id}'.", param="role_id")
    return r


async def role_object(s: AsyncSession, role_id: str) -> dict[str, Any]:
    if role_id in PREDEFINED:
        return predefined_shape(role_id)
    return role_shape(await custom_role(s, role_id))


def _editable(role_id: str) -> None:
    if role_id in PREDEFINED:
        raise bad_request(
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
    name = _check_name(role_name, "role_name")
    names = permissions.check_names(perms)
    permissions.require_held(granted, names, f"create the role '{name}'")
    await _role_name_free(s, name)
    t = now_s()
    r = CustomRole(
        id=ids.new_id("role_"),
        name=name,
        description=_check_description(description),
        permissions=orjson.dumps(names).decode(),
        created_at=t,
        updated_at=t,
        created_by=_actor_user(actor),
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
        name = _check_name(role_name, "role_name")
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
        r.description = changes["description"] = _check_description(description)
    if not changes:
        raise bad_request(
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
        raise bad_request(
            f"'{role_id}' is a predefined role: groups are assigned custom roles only (a user's "
            "organization role is set with users.update).",
            param="role_id",
            code="invalid_value",
        )
    r = await custom_role(s, role_id)
    permissions.require_held(granted, role_perms(r), f"assign the role '{r.name}'")
    if await _assignment(s, r.id, ptype, pid) is not None:
        raise conflict(f"The {ptype} '{pid}' already holds the role '{r.id}'.", code="role_assigned")
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
        raise not_found(f"The {ptype} '{pid}' does not hold the role '{role_id}' directly.", param="role_id")
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


# --- groups -------------------------------------------------------------------------------------


async def get_group(s: AsyncSession, group_id: str) -> Group:
    g = (await s.execute(select(Group).where(Group.id == group_id))).scalar()
    if g is None:
        raise not_found(f"No group found with id '{group_id}'.", param="group_id")
    return g


async def create_group(s: AsyncSession, actor: Actor, name: Any) -> Group:
    g = Group(id=ids.new_id("group_"), name=_check_name(name, "name"), created_at=now_s())
    s.add(g)
    await audit(
        s, actor, "group.created", {"id": g.id, "data": {"group_name": g.name}}, resource_id=g.id, at=g.created_at
    )
    await bump_revision(s)
    return g


async def update_group(s: AsyncSession, actor: Actor, group_id: str, name: Any) -> Group:
    g = await get_group(s, group_id)
    g.name = _check_name(name, "name")
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
        raise bad_request("Give 'user_id' of an organization user.", param="user_id", code="missing_required_parameter")
    user = await control.get_user(s, user_id)
    wanted = set(await group_permissions(s, g.id))
    if (await s.execute(select(ProjectGroup.seq).where(ProjectGroup.group_id == g.id).limit(1))).first():
        wanted.add(permissions.PROJECT_WRITE)  # the group is a project member: joining it joins projects
    permissions.require_held(granted, wanted, f"add a user to the group '{g.name}'")
    if await group_member(s, g.id, user.id) is not None:
        raise conflict(f"User '{user.id}' is already a member of group '{g.id}'.", code="user_exists")
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
        raise not_found(f"User '{user_id}' is not a member of group '{g.id}'.", param="user_id")
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
        raise not_found(f"No group '{group_id}' in project '{project_id}'.", param="group_id")
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


async def add_project_group(
    s: AsyncSession, actor: Actor, project_id: str, group_id: Any, role: Any
) -> tuple[ProjectGroup, Group]:
    p = await control.get_project(s, project_id)
    control.ensure_active(p)
    if not isinstance(group_id, str) or not group_id:
        raise bad_request("Give 'group_id'.", param="group_id", code="missing_required_parameter")
    g = await get_group(s, group_id)
    role = ops.check_project_role(role)
    if (
        await s.execute(select(ProjectGroup.seq).where(ProjectGroup.project_id == p.id, ProjectGroup.group_id == g.id))
    ).first():
        raise conflict(f"Group '{g.id}' is already a member of project '{p.id}'.", code="group_exists")
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
