"""Organization users: add, find, list, change role, remove (their own keys are revoked)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import ids
from keyplane.control.base import (
    Actor,
    audit,
    bump_revision,
    check_name,
    now_s,
    page,
    revoke_keys_where,
)
from keyplane.domain import Conflict, Invalid, NotFound
from keyplane.store.models import ApiKey, User

# --- users -------------------------------------------------------------------------------------

ROLES = ("owner", "reader")


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise Invalid("'role' must be 'owner' or 'reader'.", param="role", code="invalid_value")
    return role  # type: ignore[no-any-return]


async def add_user(
    s: AsyncSession,
    actor: Actor,
    *,
    email: object,
    role: str,
    name: str = "",
    password_hash: str | None = None,
    at: int | None = None,
) -> User:
    email = (check_name(email, "email") or "").lower()
    if "@" not in email:
        raise Invalid("'email' must be an email address.", param="email", code="invalid_value")
    check_role(role)
    if (await s.execute(select(User.id).where(User.email == email))).scalar():
        raise Conflict(f"A user with email {email} already exists.", code="user_exists")
    t = at if at is not None else now_s()
    user = User(
        id=ids.user_id(),
        email=email,
        name=name or email.split("@")[0],
        role=role,
        password_hash=password_hash,
        added_at=t,
    )
    s.add(user)
    await audit(s, actor, "user.added", {"id": user.id, "data": {"role": role}}, resource_id=user.id, at=t)
    await bump_revision(s)
    return user


async def user_by_id(s: AsyncSession, user_id: str) -> User | None:
    """The user of that id, or None."""
    return (await s.execute(select(User).where(User.id == user_id))).scalar()


async def user_by_email(s: AsyncSession, email: str) -> User | None:
    """The user of that email as given (emails are stored in lower case), or None."""
    return (await s.execute(select(User).where(User.email == email))).scalar()


async def get_user(s: AsyncSession, user_id: str) -> User:
    user = await user_by_id(s, user_id)
    if user is None:
        raise NotFound(f"No user found with id '{user_id}'.", param="user_id")
    return user


async def find_user(s: AsyncSession, id_or_email: str) -> User:
    user = (
        await s.execute(select(User).where((User.id == id_or_email) | (User.email == id_or_email.lower())))
    ).scalar()
    if user is None:
        raise NotFound(f"No user found with id or email '{id_or_email}'.", param="user_id")
    return user


async def list_users(
    s: AsyncSession, *, emails: Iterable[str] = (), after: str | None = None, limit: int = 20
) -> tuple[list[User], bool]:
    """A page of users in the order they were added, only those of ``emails`` when given: (users, has_more)."""
    stmt = select(User)
    wanted = [e.lower() for e in emails]
    if wanted:
        stmt = stmt.where(User.email.in_(wanted))
    return await page(s, User, stmt, after=after, limit=limit)


async def all_users(s: AsyncSession) -> list[User]:
    """Every user, in the order they were added."""
    return list((await s.execute(select(User).order_by(User.seq))).scalars())


async def recovery_codes_for_update(s: AsyncSession, user_id: str) -> str | None:
    """The user's stored recovery codes, the row locked until the transaction ends (PostgreSQL: FOR UPDATE);
    None when there are none or no such user."""
    return (
        await s.execute(select(User.recovery_codes).where(User.id == user_id).with_for_update())
    ).scalar_one_or_none()


async def replace_recovery_codes(s: AsyncSession, user_id: str, stored: str | None, codes: str) -> bool:
    """Write ``codes`` over the user's recovery codes only if they still are ``stored``: True when written."""
    done = await s.execute(
        update(User).where(User.id == user_id, User.recovery_codes == stored).values(recovery_codes=codes)
    )
    return int(getattr(done, "rowcount", 0) or 0) == 1


async def update_user_role(s: AsyncSession, actor: Actor, user_id: str, role: Any) -> User:
    user = await get_user(s, user_id)
    role = check_role(role)
    if user.role == "owner" and role != "owner":
        await _keep_one_owner(s, user.id)
        t = now_s()  # their admin keys act with their role from now on: read only
        await s.execute(
            update(ApiKey)
            .where(ApiKey.kind == "admin", ApiKey.owner_user_id == user.id, ApiKey.revoked_at.is_(None))
            .values(permissions='"read_only"', updated_at=t)
        )
        from keyplane.members.ops import revoke_unreachable_keys  # and their keys outside their projects go

        await revoke_unreachable_keys(s, user.id, t)
    user.role = role
    await audit(s, actor, "user.updated", {"id": user.id, "changes_requested": {"role": role}}, resource_id=user.id)
    await bump_revision(s)
    return user


async def _keep_one_owner(s: AsyncSession, leaving: str) -> None:
    owners = (
        await s.execute(select(func.count()).select_from(User).where(User.role == "owner", User.id != leaving))
    ).scalar()
    if not owners:
        raise Invalid("The organization must keep at least one owner.", code="last_owner")


async def delete_user(s: AsyncSession, actor: Actor, user_id: str) -> None:
    """Remove a user. Their own keys are revoked; service accounts and their keys live on."""
    user = await get_user(s, user_id)
    if user.role == "owner":
        await _keep_one_owner(s, user.id)
    t = now_s()
    await revoke_keys_where(
        s,
        ApiKey.owner_user_id == user.id,
        ApiKey.service_account_id.is_(None),
        reason="owner removed from the organization",
        at=t,
    )
    from keyplane.members.ops import forget_user  # and their project memberships

    await forget_user(s, user.id)
    await s.delete(user)
    await audit(s, actor, "user.deleted", {"id": user.id}, resource_id=user.id, at=t)
    await bump_revision(s)
