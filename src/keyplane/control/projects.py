"""Projects: create, find, list, rename, archive."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import ids
from keyplane.control.base import (
    Actor,
    audit,
    bump_revision,
    check_name,
    now_s,
    page,
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
    """By id, or by name when the name is unique (for the CLI): among the active projects first, then among all (an
    archived project is found by its name too while no active one has it)."""
    p = (await s.execute(select(Project).where(Project.id == id_or_name))).scalar()
    if p is not None:
        return p
    rows = list((await s.execute(select(Project).where(Project.name == id_or_name))).scalars())
    active = [r for r in rows if r.status == "active"]
    if len(active) == 1 or len(rows) == 1:
        return active[0] if active else rows[0]
    if len(rows) > 1:
        named = active or rows
        ids = ", ".join(f"{r.id} ({r.status})" for r in named[:10])
        raise Invalid(f"Several projects are named '{id_or_name}' ({ids}); use the project id.", param="project")
    raise NotFound(f"No project found with id or name '{id_or_name}'.", param="project_id")


# --- reading: the admin API (a page at a time) and the dashboard (all at once) share these -------------


def _projects(include_archived: bool) -> Select[Any]:
    stmt = select(Project)
    return stmt if include_archived else stmt.where(Project.status == "active")


async def list_projects(
    s: AsyncSession, *, include_archived: bool = False, after: str | None = None, limit: int = 20
) -> tuple[list[Project], bool]:
    """A page of projects in creation order: (projects, has_more)."""
    return await page(s, Project, _projects(include_archived), after=after, limit=limit)


async def all_projects(s: AsyncSession, *, include_archived: bool = True) -> list[Project]:
    """Every project in creation order."""
    return list((await s.execute(_projects(include_archived).order_by(Project.seq))).scalars())


async def count_projects(s: AsyncSession, status: str) -> int:
    """How many projects are ``active`` (or ``archived``)."""
    n = (await s.execute(select(func.count()).select_from(Project).where(Project.status == status))).scalar()
    return int(n or 0)


async def project_names(s: AsyncSession, project_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Project names by id: of ``project_ids``, or of every project when None."""
    stmt = select(Project.id, Project.name)
    if project_ids is not None:
        wanted = set(project_ids)
        if not wanted:
            return {}
        stmt = stmt.where(Project.id.in_(wanted))
    return {pid: name for pid, name in (await s.execute(stmt)).all()}


def ensure_active(p: Project) -> None:
    if p.status != "active":
        raise Invalid(
            f"Project '{p.id}' is archived; archived projects cannot be changed.",
            param="project_id",
            code="project_archived",
        )


async def update_project(
    s: AsyncSession, actor: Actor, project_id: str, name: Any, reserved: frozenset[str] = frozenset()
) -> Project:
    """Rename a project. ``reserved``: the names the configuration gives something to (a dedicated upstream, the
    response cache: FileConfig.project_refs); a project may neither take one nor leave one (400
    ``project_name_reserved``), since renaming takes only ``api.project.write`` in the project renamed."""
    p = await get_project(s, project_id)
    ensure_active(p)
    name = check_name(name)
    moved = {n for n in (p.name, name) if n in reserved} if name != p.name else set()
    if moved:
        raise Invalid(
            f"The name '{sorted(moved)[0]}' is named in keyplane's configuration (a dedicated upstream or the "
            "response cache's project lists), which gives the project bearing it what it configures: it can be "
            "given to or taken from a project only by changing the configuration (name the project by its id "
            "there to rename it freely).",
            param="name",
            code="project_name_reserved",
        )
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
