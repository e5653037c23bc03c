"""Project API keys: create, list, update permissions, revoke, suspend, rotate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import ids, keys
from keyplane.control.base import (
    Actor,
    audit,
    bump_revision,
    check_name,
    check_permissions,
    check_positive_int,
    now_s,
    page,
)
from keyplane.control.projects import (
    ensure_active,
    get_project,
)
from keyplane.domain import Invalid, NotFound
from keyplane.scopes import Permissions, parse_permissions
from keyplane.store.models import ApiKey, ServiceAccount, User

# --- keys --------------------------------------------------------------------------------------


def new_key_row(
    secret: bytes,
    kind: keys.KeyKind,
    name: str,
    *,
    project_id: str | None,
    owner_user_id: str | None,
    service_account_id: str | None,
    permissions: Permissions,
    expires_at: int | None,
    at: int,
) -> tuple[ApiKey, str]:
    value = keys.generate(kind)
    row = ApiKey(
        id=ids.key_id(),
        kind=kind,
        name=name,
        digest=keys.digest(secret, value),
        redacted_value=keys.redact(value),
        project_id=project_id,
        owner_user_id=owner_user_id,
        service_account_id=service_account_id,
        permissions=orjson.dumps(permissions.to_json()).decode(),
        created_at=at,
        expires_at=expires_at,
        updated_at=at,
    )
    return row, value


async def create_project_key(
    s: AsyncSession,
    actor: Actor,
    secret: bytes,
    project_id: str,
    *,
    name: Any,
    owner_user_id: str | None,
    permissions: Any = None,
    expires_in_seconds: Any = None,
    at: int | None = None,
) -> tuple[ApiKey, str]:
    """A user key in a project (keyplane extension: the platform has no such endpoint)."""
    p = await get_project(s, project_id)
    ensure_active(p)
    name = check_name(name)
    perms = check_permissions(permissions)
    ttl = check_positive_int(expires_in_seconds, "expires_in_seconds")
    if owner_user_id is not None:
        from keyplane.members.ops import require_member_for_key  # a user key only where its user is a member

        await require_member_for_key(s, p.id, owner_user_id)
    else:
        owner = (await s.execute(select(User).where(User.role == "owner").order_by(User.seq))).scalar()
        owner_user_id = owner.id if owner else None
    t = at if at is not None else now_s()
    row, value = new_key_row(
        secret,
        "proj",
        name or "",
        project_id=p.id,
        owner_user_id=owner_user_id,
        service_account_id=None,
        permissions=perms,
        expires_at=t + ttl if ttl else None,
        at=t,
    )
    s.add(row)
    await audit(
        s,
        actor,
        "api_key.created",
        {"id": row.id, "data": {"scopes": sorted(perms.scopes)}},
        project_id=p.id,
        resource_id=row.id,
        at=t,
    )
    await bump_revision(s)
    return row, value


async def get_key(s: AsyncSession, key_id: str, project_id: str | None = None, kind: str | None = None) -> ApiKey:
    stmt = select(ApiKey).where(ApiKey.id == key_id)
    if project_id is not None:
        stmt = stmt.where(ApiKey.project_id == project_id)
    if kind == "admin":
        stmt = stmt.where(ApiKey.kind == "admin")
    elif kind == "project":
        stmt = stmt.where(ApiKey.kind != "admin")
    row = (await s.execute(stmt)).scalar()
    if row is None:
        raise NotFound(f"No API key found with id '{key_id}'.", param="key_id")
    return row


# --- reading: the admin API (a page at a time) and the dashboard (all at once) share these -------------


def _project_keys(project_id: str, include_revoked: bool) -> Select[Any]:
    stmt = select(ApiKey).where(ApiKey.project_id == project_id, ApiKey.kind != "admin")
    return stmt if include_revoked else stmt.where(ApiKey.revoked_at.is_(None))


async def list_project_keys(
    s: AsyncSession, project_id: str, *, include_revoked: bool = False, after: str | None = None, limit: int = 20
) -> tuple[list[ApiKey], bool]:
    """A page of a project's keys (user and service-account keys) in creation order: (keys, has_more)."""
    await get_project(s, project_id)
    return await page(s, ApiKey, _project_keys(project_id, include_revoked), after=after, limit=limit)


async def all_project_keys(s: AsyncSession, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
    """Every key of a project, newest first."""
    stmt = _project_keys(project_id, include_revoked).order_by(ApiKey.seq.desc())
    return list((await s.execute(stmt)).scalars())


async def all_keys(
    s: AsyncSession, *, project_id: str | None = None, admin: bool = False, include_revoked: bool = True
) -> list[ApiKey]:
    """Every key but the admin keys (only the admin keys when ``admin``), revoked ones too unless not
    ``include_revoked``, in creation order; only ``project_id``'s when given."""
    stmt = select(ApiKey).where(ApiKey.kind == "admin" if admin else ApiKey.kind != "admin").order_by(ApiKey.seq)
    if project_id is not None:
        stmt = stmt.where(ApiKey.project_id == project_id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list((await s.execute(stmt)).scalars())


async def key_by_id(s: AsyncSession, key_id: str) -> ApiKey | None:
    """The key of that id, whatever its kind, or None."""
    return (await s.execute(select(ApiKey).where(ApiKey.id == key_id))).scalar()


async def keys_by_id(s: AsyncSession, key_ids: Iterable[str]) -> dict[str, ApiKey]:
    """The keys of ``key_ids`` (of any kind) by id; unknown ids are left out."""
    return {k.id: k for k in (await s.execute(select(ApiKey).where(ApiKey.id.in_(list(key_ids))))).scalars()}


async def find_key_ids(s: AsyncSession, id_or_name: str, *, project_ids: Sequence[str] = ()) -> list[str]:
    """The ids of the keys (of any kind) whose id or name is ``id_or_name``, only in ``project_ids`` when given."""
    stmt = select(ApiKey.id).where((ApiKey.id == id_or_name) | (ApiKey.name == id_or_name))
    if project_ids:
        stmt = stmt.where(ApiKey.project_id.in_(project_ids))
    return list((await s.execute(stmt)).scalars())


async def key_owners(s: AsyncSession, rows: Sequence[ApiKey]) -> tuple[dict[str, User], dict[str, ServiceAccount]]:
    """The users and service accounts owning ``rows``, by id."""
    uids = {r.owner_user_id for r in rows if r.owner_user_id}
    sids = {r.service_account_id for r in rows if r.service_account_id}
    users = {u.id: u for u in (await s.execute(select(User).where(User.id.in_(uids)))).scalars()} if uids else {}
    sas = (
        {a.id: a for a in (await s.execute(select(ServiceAccount).where(ServiceAccount.id.in_(sids)))).scalars()}
        if sids
        else {}
    )
    return users, sas


async def active_key_counts(s: AsyncSession) -> dict[str, int]:
    """How many keys each project has that are not revoked (admin keys aside), by project id."""
    stmt = (
        select(ApiKey.project_id, func.count())
        .where(ApiKey.revoked_at.is_(None), ApiKey.kind != "admin")
        .group_by(ApiKey.project_id)
    )
    return {pid: int(n) for pid, n in (await s.execute(stmt)).all() if pid is not None}


async def count_active_keys(s: AsyncSession) -> int:
    """How many keys are not revoked, admin keys aside."""
    stmt = select(func.count()).select_from(ApiKey).where(ApiKey.kind != "admin", ApiKey.revoked_at.is_(None))
    return int((await s.execute(stmt)).scalar() or 0)


async def key_names(s: AsyncSession) -> dict[str, tuple[str, str]]:
    """Every key's (name, redacted value) by id, to label usage and events."""
    return {
        kid: (name, redacted)
        for kid, name, redacted in (await s.execute(select(ApiKey.id, ApiKey.name, ApiKey.redacted_value))).all()
    }


async def update_key(
    s: AsyncSession,
    actor: Actor,
    key_id: str,
    *,
    project_id: str | None = None,
    name: Any = None,
    permissions: Any = None,
    expires_in_seconds: Any = None,
) -> ApiKey:
    row = await get_key(s, key_id, project_id, kind="project")
    if row.project_id:
        ensure_active(await get_project(s, row.project_id))
    changes: dict[str, Any] = {}
    if name is not None:
        row.name = check_name(name) or row.name
        changes["name"] = row.name
    if permissions is not None:
        perms = check_permissions(permissions)
        row.permissions = orjson.dumps(perms.to_json()).decode()
        changes["scopes"] = sorted(perms.scopes)
    t = now_s()
    if expires_in_seconds is not None:
        if row.expires_at is not None and t >= row.expires_at:
            raise Invalid("The key has expired; expired keys cannot be updated.", code="key_expired")
        row.expires_at = t + (check_positive_int(expires_in_seconds, "expires_in_seconds") or 0)
        changes["expires_at"] = row.expires_at
    if not changes:
        raise Invalid(
            "Nothing to update: give 'name', 'scopes' (or 'permissions') and/or 'expires_in_seconds'.",
            code="missing_required_parameter",
        )
    row.updated_at = t
    await audit(
        s,
        actor,
        "api_key.updated",
        {"id": row.id, "changes_requested": changes},
        project_id=row.project_id,
        resource_id=row.id,
    )
    await bump_revision(s)
    return row


async def revoke_key(
    s: AsyncSession,
    actor: Actor,
    row: ApiKey,
    reason: str,
    event: str = "api_key.deleted",
) -> ApiKey:
    t = now_s()
    if row.revoked_at is None:
        row.revoked_at, row.revoke_reason, row.updated_at = t, reason, t
        await audit(
            s, actor, event, {"id": row.id, "reason": reason}, project_id=row.project_id, resource_id=row.id, at=t
        )
        await bump_revision(s)
    return row


async def set_suspended(s: AsyncSession, actor: Actor, row: ApiKey, reason: str | None) -> ApiKey:
    """Suspend (reason given) or resume (None) a key: reversible, unlike revoke."""
    t = now_s()
    if reason is not None:
        if row.revoked_at is not None:
            raise Invalid("The key is revoked; a revoked key cannot be suspended or resumed.")
        row.suspended_at, row.suspend_reason = t, reason
        event = "api_key.suspended"
    else:
        if row.revoked_at is not None:
            raise Invalid("The key is revoked; a revoked key cannot be resumed. Create a new key.")
        row.suspended_at, row.suspend_reason = None, None
        event = "api_key.resumed"
    row.updated_at = t
    await audit(s, actor, event, {"id": row.id, "reason": reason}, project_id=row.project_id, resource_id=row.id, at=t)
    await bump_revision(s)
    return row


async def rotate_key(
    s: AsyncSession,
    actor: Actor,
    secret: bytes,
    key_id: str,
    *,
    project_id: str | None = None,
    grace_seconds: Any = None,
) -> tuple[ApiKey, str, ApiKey]:
    """A new value for a key: same name, owner, permissions; the old one stops now or after a grace."""
    old = await get_key(s, key_id, project_id, kind="project")
    if old.revoked_at is not None:
        raise Invalid("The key is revoked; create a new key instead of rotating it.", code="key_revoked")
    if old.suspended_at is not None:  # a new value would be an active key: the suspension's review skipped
        raise Invalid(
            "The key is suspended (by the kill switch or an administrator); resume it before rotating it, or "
            "create a new key.",
            code="key_suspended",
        )
    if old.project_id:
        ensure_active(await get_project(s, old.project_id))
    grace = 0
    if grace_seconds is not None:
        ok = isinstance(grace_seconds, int) and not isinstance(grace_seconds, bool)
        if not ok or not 0 <= grace_seconds <= 30 * 86400:
            raise Invalid(
                "'grace_period_seconds' must be an integer from 0 to 2592000 (30 days).",
                param="grace_period_seconds",
                code="invalid_value",
            )
        grace = grace_seconds
    t = now_s()
    new, value = new_key_row(
        secret,
        old.kind,  # type: ignore[arg-type]
        old.name,
        project_id=old.project_id,
        owner_user_id=old.owner_user_id,
        service_account_id=old.service_account_id,
        permissions=parse_permissions(orjson.loads(old.permissions)),
        expires_at=old.expires_at,
        at=t,
    )
    new.lineage_id = old.lineage_id or old.id  # one line: one spend counter and rate-limit bucket
    s.add(new)
    from keyplane.access.models import copy_key_policies  # the key's own access policies go with it
    from keyplane.billing.models import copy_key_limits  # and its spend limit and rate limits

    await copy_key_policies(s, old.id, new.id, t)
    await copy_key_limits(s, old.id, new.id, t)
    old.rotated_to = new.id
    old.updated_at = t
    if grace:
        old.expires_at = min(old.expires_at or t + grace, t + grace)
    else:
        old.revoked_at, old.revoke_reason = t, f"rotated to {new.id}"
    await audit(
        s,
        actor,
        "api_key.created",
        {"id": new.id, "data": {"rotated_from": old.id}},
        project_id=new.project_id,
        resource_id=new.id,
        at=t,
    )
    await audit(
        s,
        actor,
        "api_key.updated",
        {
            "id": old.id,
            "changes_requested": {
                "rotated_to": new.id,
                "expires_at": old.expires_at,
                "revoked": old.revoked_at is not None,
            },
        },
        project_id=old.project_id,
        resource_id=old.id,
        at=t,
    )
    await bump_revision(s)
    return new, value, old
