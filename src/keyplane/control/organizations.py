"""The organization: read it, initialize it (owner, default project, first keys)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import ids
from keyplane.control.admin_keys import create_admin_key
from keyplane.control.base import (
    CLI_ACTOR,
    now_s,
)
from keyplane.control.projects import (
    create_project,
)
from keyplane.control.service_accounts import create_service_account
from keyplane.control.users import (
    add_user,
)
from keyplane.store.models import Meta, Organization

# --- organization ------------------------------------------------------------------------------


async def get_org(s: AsyncSession) -> Organization | None:
    return (await s.execute(select(Organization))).scalar()


class AlreadyInitialized(Exception):
    pass


async def init_org(
    s: AsyncSession,
    secret: bytes,
    org_name: str,
    owner_email: str,
    *,
    owner_name: str = "",
    at: int | None = None,
) -> dict[str, Any]:
    """Create the organization, its owner, "Default project", a service-account key and an admin key."""
    if await get_org(s) is not None:
        raise AlreadyInitialized()
    t = at if at is not None else now_s()
    org = Organization(id=ids.org_id(), name=org_name, created_at=t)
    s.add(org)
    s.add(Meta(name="revision", value=0))
    owner = await add_user(s, CLI_ACTOR, email=owner_email, role="owner", name=owner_name, at=t)
    project = await create_project(s, CLI_ACTOR, "Default project", at=t)
    sa, sa_key = await create_service_account(s, CLI_ACTOR, project, "default", at=t, secret=secret)
    admin_row, admin_value = await create_admin_key(
        s, CLI_ACTOR, secret, "init admin key", owner_user_id=owner.id, at=t
    )
    return {
        "organization_id": org.id,
        "owner_user_id": owner.id,
        "project_id": project.id,
        "service_account_id": sa.id,
        "api_key": sa_key,
        "api_key_id": sa.api_key_id,  # type: ignore[attr-defined]
        "admin_key": admin_value,
        "admin_key_id": admin_row.id,
    }
