"""Effective permissions of users, read from the store (docs/members-and-roles.md "Custom roles and groups").

A user's effective permissions = their organization role's (owner | reader) + every custom role assigned
to them directly or through a group they belong to. The snapshot loads them for every user on each full
reload (any change to roles, assignments, groups or users is an opaque change on the bus, so every
instance reloads on its next event or poll), and the admin API checks each call against them.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select

from keyplane.members import permissions
from keyplane.members.models import CustomRole, GroupUser, RoleAssignment
from keyplane.store.models import User


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
    roles = {r.id: _perms(r.permissions) for r in (await conn.execute(
        select(CustomRole.id, CustomRole.permissions))).all()}
    direct: dict[str, list[str]] = {}
    by_group: dict[str, list[str]] = {}
    for a in (await conn.execute(select(RoleAssignment.role_id, RoleAssignment.principal_type,
                                        RoleAssignment.principal_id))).all():
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
