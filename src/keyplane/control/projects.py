"""Projects: create, find, rename, archive."""

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
    now_s,
)
from keyplane.domain import Invalid, NotFound
from keyplane.store.models import Project

# --- projects ----------------------------------------------------------------------------------


async def create_project(s: AsyncSession, actor: Actor, name: Any, at: int | None = None) -> Project:
    name = check_name(name)
    t = at if at is not None else now_s()
    p = Project(id=ids.project_id(), name=name, status="active", created_at=t)
    s.add(p)
    await audit(
        s,
        actor,
        "project.created",
        {"id": p.id, "data": {"name": name, "title": name}},
        project_id=p.id,
        resource_id=p.id,
        at=t,
    )
    await bump_revision(s)
    return p


async def get_project(s: AsyncSession, project_id: str) -> Project:
    p = (await s.execute(select(Project).where(Project.id == project_id))).scalar()
    if p is None:
        raise NotFound(f"No project found with id '{project_id}'.", param="project_id")
    return p


async def find_project(s: AsyncSession, id_or_name: str) -> Project:
    """By id, or by name when the name is unique (for the CLI)."""
    p = (await s.execute(select(Project).where(Project.id == id_or_name))).scalar()
    if p is not None:
        return p
    rows = list((await s.execute(select(Project).where(Project.name == id_or_name))).scalars())
    if len(rows) == 1:
        return rows[0]
    if len(rows) > 1:
        raise Invalid(f"Several projects are named '{id_or_name}'; use the project id.", param="project")
    raise NotFound(f"No project found with id or name '{id_or_name}'.", param="project_id")


def ensure_active(p: Project) -> None:
    if p.status != "active":
        raise Invalid(
            f"Project '{p.id}' is archived; archived projects cannot be changed.",
            param="project_id",
            code="project_archived",
        )


async def update_project(s: AsyncSession, actor: Actor, project_id: str, name: Any) -> Project:
    p = await get_project(s, project_id)
    ensure_active(p)
    name = check_name(name)
    p.name = name
    await audit(
        s,
        actor,
        "project.updated",
        {"id": p.id, "changes_requested": {"title": name, "name": name}},
        project_id=p.id,
        resource_id=p.id,
    )
    await bump_revision(s)
    return p


async def archive_project(s: AsyncSession, actor: Actor, project_id: str) -> Project:
    p = await get_project(s, project_id)
    if p.status == "archived":
        return p
    t = now_s()
    p.status, p.archived_at = "archived", t
    from keyplane.members.project_roles import forget_project  # nobody holds its project roles any more

    await forget_project(s, p.id)
    await audit(s, actor, "project.archived", {"id": p.id}, project_id=p.id, resource_id=p.id, at=t)
    await bump_revision(s)
    return p
