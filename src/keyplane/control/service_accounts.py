"""Service accounts and their first key."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import ids
from keyplane.control.base import (
    Actor,
    audit,
    bump_revision,
    check_name,
    check_positive_int,
    now_s,
    page,
    revoke_keys_where,
)
from keyplane.control.keys import (
    new_key_row,
)
from keyplane.control.projects import (
    ensure_active,
    get_project,
)
from keyplane.domain import NotFound
from keyplane.scopes import parse_permissions
from keyplane.store.models import ApiKey, Project, ServiceAccount

# --- service accounts --------------------------------------------------------------------------


async def create_service_account(
    s: AsyncSession,
    actor: Actor,
    project: Project,
    name: Any,
    *,
    secret: bytes,
    expires_in_seconds: Any = None,
    at: int | None = None,
) -> tuple[ServiceAccount, str]:
    ensure_active(project)
    name = check_name(name)
    ttl = check_positive_int(expires_in_seconds, "expires_in_seconds")
    t = at if at is not None else now_s()
    sa = ServiceAccount(id=ids.service_account_id(), project_id=project.id, name=name, role="member", created_at=t)
    s.add(sa)
    row, value = new_key_row(
        secret,
        "svc",
        name or "",
        project_id=project.id,
        owner_user_id=None,
        service_account_id=sa.id,
        permissions=parse_permissions("all"),
        expires_at=t + ttl if ttl else None,
        at=t,
    )
    s.add(row)
    sa.api_key_id = row.id  # type: ignore[attr-defined]
    sa.api_key_row = row  # type: ignore[attr-defined]
    await audit(
        s,
        actor,
        "service_account.created",
        {"id": sa.id, "data": {"role": "member"}},
        project_id=project.id,
        resource_id=sa.id,
        at=t,
    )
    await audit(
        s,
        actor,
        "api_key.created",
        {"id": row.id, "data": {"scopes": ["all"]}},
        project_id=project.id,
        resource_id=row.id,
        at=t,
    )
    await bump_revision(s)
    return sa, value


async def get_service_account(s: AsyncSession, project_id: str, sa_id: str) -> ServiceAccount:
    sa = (
        await s.execute(
            select(ServiceAccount).where(
                ServiceAccount.id == sa_id, ServiceAccount.project_id == project_id, ServiceAccount.deleted_at.is_(None)
            )
        )
    ).scalar()
    if sa is None:
        raise NotFound(
            f"No service account found with id '{sa_id}' in project '{project_id}'.", param="service_account_id"
        )
    return sa


async def list_service_accounts(
    s: AsyncSession, project_id: str, *, after: str | None = None, limit: int = 20
) -> tuple[list[ServiceAccount], bool]:
    """A page of a project's service accounts (deleted ones aside) in creation order: (accounts, has_more)."""
    await get_project(s, project_id)
    stmt = select(ServiceAccount).where(ServiceAccount.project_id == project_id, ServiceAccount.deleted_at.is_(None))
    return await page(s, ServiceAccount, stmt, after=after, limit=limit)


async def delete_service_account(s: AsyncSession, actor: Actor, project_id: str, sa_id: str) -> None:
    sa = await get_service_account(s, project_id, sa_id)
    t = now_s()
    sa.deleted_at = t
    await revoke_keys_where(s, ApiKey.service_account_id == sa.id, reason="service account deleted", at=t)
    await audit(s, actor, "service_account.deleted", {"id": sa.id}, project_id=project_id, resource_id=sa.id, at=t)
    await bump_revision(s)
