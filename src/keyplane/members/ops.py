"""Project membership and service-account key operations, shared by the admin API and the CLI.

Each change runs in the caller's transaction with its audit entry and a revision bump (as keyplane.control).
The member rule: organization owners reach every project; any other user reaches a project only as its
member, holds user keys only there, and loses those keys the moment they leave it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control
from keyplane.control import Actor, audit, bump_revision, now_s
from keyplane.domain import Conflict, Invalid, NotFound
from keyplane.members.models import GroupUser, ProjectGroup, ProjectUser
from keyplane.store.models import ApiKey, ServiceAccount, User

PROJECT_ROLES = ("owner", "member")
SERVICE_ACCOUNT_ROLES = ("owner", "member")


def check_project_role(role: Any, roles: tuple[str, ...] = PROJECT_ROLES) -> str:
    if role not in roles:
        raise Invalid(f"'role' must be one of: {', '.join(roles)}.", param="role", code="invalid_value")
    return str(role)


async def membership(s: AsyncSession, project_id: str, user_id: str) -> ProjectUser | None:
    return (
        await s.execute(select(ProjectUser).where(ProjectUser.project_id == project_id, ProjectUser.user_id == user_id))
    ).scalar()


def via_groups(user_id: str) -> Any:
    """The projects ``user_id`` is a member of through a group (projects.groups)."""
    return (
        select(ProjectGroup.project_id)
        .join(GroupUser, GroupUser.group_id == ProjectGroup.group_id)
        .where(GroupUser.user_id == user_id)
    )


async def can_reach(s: AsyncSession, user: User, project_id: str) -> bool:
    """May ``user`` see and use the project (keys, dashboard)? Organization owners always may; anyone else
    as a member, directly or through a group."""
    if user.role == "owner" or await membership(s, project_id, user.id) is not None:
        return True
    return (
        await s.execute(via_groups(user.id).where(ProjectGroup.project_id == project_id).limit(1))
    ).first() is not None


async def reachable_project_ids(s: AsyncSession, user: User) -> set[str] | None:
    """The projects ``user`` may see, or None for all of them (an organization owner)."""
    if user.role == "owner":
        return None
    rows = await s.execute(select(ProjectUser.project_id).where(ProjectUser.user_id == user.id))
    return set(rows.scalars()) | set((await s.execute(via_groups(user.id))).scalars())


async def require_member_for_key(s: AsyncSession, project_id: str, user_id: str) -> None:
    """A user key may be created only for a user who can reach the project (400 otherwise)."""
    user = await control.get_user(s, user_id)
    if not await can_reach(s, user, project_id):
        raise Invalid(
            f"User '{user_id}' is not a member of project '{project_id}'; add them to the project "
            f"first: `keyplane members add {project_id} {user.email}`, or POST "
            f"/v1/organization/projects/{project_id}/users.",
            param="owner_user_id",
            code="not_a_project_member",
        )


async def _user_for_add(s: AsyncSession, user_id: Any, email: Any) -> User:
    if isinstance(user_id, str) and user_id:
        return await control.get_user(s, user_id)
    if isinstance(email, str) and email:
        user = (await s.execute(select(User).where(User.email == email.strip().lower()))).scalar()
        if user is None:
            raise NotFound(
                f"No user found with email '{email}'; invite or add them to the organization first.", param="email"
            )
        return user
    raise Invalid(
        "Give 'user_id' or 'email' of an organization user.", param="user_id", code="missing_required_parameter"
    )


async def add_project_user(
    s: AsyncSession,
    actor: Actor,
    project_id: str,
    *,
    role: Any,
    user_id: Any = None,
    email: Any = None,
) -> tuple[ProjectUser, User]:
    p = await control.get_project(s, project_id)
    control.ensure_active(p)
    role = check_project_role(role)
    user = await _user_for_add(s, user_id, email)
    if await membership(s, p.id, user.id) is not None:
        raise Conflict(f"User '{user.id}' is already a member of project '{p.id}'.", code="user_exists")
    t = now_s()
    m = ProjectUser(project_id=p.id, user_id=user.id, role=role, added_at=t)
    s.add(m)
    await audit(
        s,
        actor,
        "user.added",
        {"id": user.id, "data": {"role": role, "project_id": p.id}},
        project_id=p.id,
        resource_id=user.id,
        at=t,
    )
    await bump_revision(s)
    return m, user


async def get_project_user(s: AsyncSession, project_id: str, user_id: str) -> tuple[ProjectUser, User]:
    await control.get_project(s, project_id)
    m = await membership(s, project_id, user_id)
    user = (await s.execute(select(User).where(User.id == user_id))).scalar()
    if m is None or user is None:
        raise NotFound(f"No user '{user_id}' in project '{project_id}'.", param="user_id")
    return m, user


async def update_project_user(
    s: AsyncSession, actor: Actor, project_id: str, user_id: str, role: Any
) -> tuple[ProjectUser, User]:
    m, user = await get_project_user(s, project_id, user_id)
    control.ensure_active(await control.get_project(s, project_id))
    m.role = check_project_role(role)
    await audit(
        s,
        actor,
        "user.updated",
        {"id": user.id, "changes_requested": {"role": m.role, "project_id": project_id}},
        project_id=project_id,
        resource_id=user.id,
    )
    await bump_revision(s)
    return m, user


async def remove_project_user(s: AsyncSession, actor: Actor, project_id: str, user_id: str) -> int:
    """Remove a member; their user keys in that project are revoked in the same transaction. Returns how many."""
    m, user = await get_project_user(s, project_id, user_id)
    t = now_s()
    revoked = await control.revoke_keys_where(
        s,
        ApiKey.project_id == project_id,
        ApiKey.owner_user_id == user.id,
        ApiKey.service_account_id.is_(None),
        ApiKey.kind == "proj",
        reason="owner removed from the project",
        at=t,
    )
    await s.delete(m)
    from keyplane.members import project_roles  # the project roles they held there go with them

    await project_roles.forget_member(s, project_id, "user", user.id)
    await audit(
        s,
        actor,
        "user.deleted",
        {"id": user.id, "project_id": project_id, "keys_revoked": revoked},
        project_id=project_id,
        resource_id=user.id,
        at=t,
    )
    await bump_revision(s)
    return revoked


async def list_project_users(
    s: AsyncSession, project_id: str, *, after: str | None, limit: int
) -> tuple[list[tuple[ProjectUser, User]], bool]:
    await control.get_project(s, project_id)
    stmt = (
        select(ProjectUser, User).join(User, User.id == ProjectUser.user_id).where(ProjectUser.project_id == project_id)
    )
    if after:
        seq = (
            await s.execute(
                select(ProjectUser.seq).where(ProjectUser.project_id == project_id, ProjectUser.user_id == after)
            )
        ).scalar()
        if seq is None:
            raise Invalid(f"No object with id '{after}' to page from.", param="after")
        stmt = stmt.where(ProjectUser.seq > seq)
    rows = [(m, u) for m, u in (await s.execute(stmt.order_by(ProjectUser.seq).limit(limit + 1))).all()]
    return rows[:limit], len(rows) > limit


async def forget_user(s: AsyncSession, user_id: str) -> None:
    """Drop a removed user's memberships (called when the user leaves the organization)."""
    await s.execute(delete(ProjectUser).where(ProjectUser.user_id == user_id))
    from keyplane.members.groups import forget_user as leave_groups  # and their groups and custom roles

    await leave_groups(s, user_id)


# --- service accounts: more keys, role ------------------------------------------------------------


async def create_service_account_key(
    s: AsyncSession,
    actor: Actor,
    secret: bytes,
    project_id: str,
    sa_id: str,
    *,
    name: Any = None,
    scopes: Any = None,
    expires_in_seconds: Any = None,
) -> tuple[ApiKey, str]:
    """Another key for a service account (a rotation holds two): same project, its own name and scopes."""
    p = await control.get_project(s, project_id)
    control.ensure_active(p)
    sa = await control.get_service_account(s, project_id, sa_id)
    key_name = control.check_name(name, required=False) or sa.name
    perms = control.check_permissions(scopes)
    ttl = control.check_positive_int(expires_in_seconds, "expires_in_seconds")
    t = now_s()
    row, value = control.new_key_row(
        secret,
        "svc",
        key_name,
        project_id=p.id,
        owner_user_id=None,
        service_account_id=sa.id,
        permissions=perms,
        expires_at=t + ttl if ttl else None,
        at=t,
    )
    s.add(row)
    await audit(
        s,
        actor,
        "api_key.created",
        {"id": row.id, "data": {"scopes": sorted(perms.scopes), "service_account_id": sa.id}},
        project_id=p.id,
        resource_id=row.id,
        at=t,
    )
    await bump_revision(s)
    return row, value


async def update_service_account(
    s: AsyncSession, actor: Actor, project_id: str, sa_id: str, *, name: Any = None, role: Any = None
) -> ServiceAccount:
    control.ensure_active(await control.get_project(s, project_id))
    sa = await control.get_service_account(s, project_id, sa_id)
    changes: dict[str, Any] = {}
    if name is not None:
        sa.name = control.check_name(name) or sa.name
        changes["name"] = sa.name
    if role is not None:
        sa.role = check_project_role(role, SERVICE_ACCOUNT_ROLES)
        changes["role"] = sa.role
    if not changes:
        raise Invalid("Nothing to update: give 'name' and/or 'role'.", code="missing_required_parameter")
    await audit(
        s,
        actor,
        "service_account.updated",
        {"id": sa.id, "changes_requested": changes},
        project_id=project_id,
        resource_id=sa.id,
    )
    await bump_revision(s)
    return sa


async def ensure_reachable(s: AsyncSession, user: User | None, project_id: str) -> None:
    """404 (as if absent) when a signed-in user who is not an organization owner is not a member."""
    if user is not None and not await can_reach(s, user, project_id):
        raise NotFound(f"No project found with id '{project_id}'.", param="project_id")


async def revoke_unreachable_keys(s: AsyncSession, user_id: str, at: int) -> None:
    """After an owner becomes a reader: their user keys in projects they are not a member of are revoked."""
    member_of = select(ProjectUser.project_id).where(ProjectUser.user_id == user_id)
    await control.revoke_keys_where(
        s,
        ApiKey.owner_user_id == user_id,
        ApiKey.kind == "proj",
        ApiKey.service_account_id.is_(None),
        ApiKey.project_id.not_in(member_of),
        ApiKey.project_id.not_in(via_groups(user_id)),
        reason="owner is no longer a member of the project",
        at=at,
    )


async def revoke_if_unreachable(s: AsyncSession, user_ids: list[str], at: int) -> None:
    """After a group left a project, a user left a group or a group was deleted: the user keys of those
    users (organization owners aside) in projects they no longer reach are revoked, in the same transaction."""
    await s.flush()
    readers = (await s.execute(select(User.id).where(User.id.in_(user_ids), User.role != "owner"))).scalars()
    for uid in list(readers):
        await revoke_unreachable_keys(s, uid, at)
