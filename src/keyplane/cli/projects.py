"""`keyplane projects ...` (registered by keyplane.cli.registry)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keyplane import control
from keyplane.cli.common import JsonOpt, err, out, print_json, run_store, settings, table, ts


def projects_create(name: Annotated[str, typer.Argument(help="Project name.")], json: JsonOpt = False) -> None:
    """Create a project."""
    from keyplane.admin import shapes

    async def go(s: Any) -> tuple[Any, list[Any]]:
        p = await control.create_project(s, control.CLI_ACTOR, name)
        same = [x for x in await control.all_projects(s, include_archived=False) if x.name == p.name and x.id != p.id]
        return p, same

    p, same = run_store(settings(), go, write=True)
    if same:
        err.print(
            f"warning: {len(same)} other active project(s) named {p.name!r} ({', '.join(x.id for x in same)}): "
            "name them by id in other commands (or rename or archive one).",
            markup=False,
        )
    if json:
        print_json(shapes.project(p))
    else:
        out.print(f"created project {p.id} ({p.name})", markup=False)


def projects_list(
    all: Annotated[bool, typer.Option("--all", help="Include archived projects.")] = False,
    json: JsonOpt = False,
) -> None:
    """List projects."""
    from keyplane.admin import shapes

    async def go(s: Any) -> list[Any]:
        return await control.all_projects(s, include_archived=all)

    rows = run_store(settings(), go)
    if json:
        print_json([shapes.project(p) for p in rows])
        return
    table("Projects", ["id", "name", "status", "created"], [(p.id, p.name, p.status, ts(p.created_at)) for p in rows])


def projects_archive(
    project: Annotated[str, typer.Argument(help="Project id or unique name.")], json: JsonOpt = False
) -> None:
    """Archive a project: its keys stop working; it stays for reporting."""
    from keyplane.admin import shapes

    async def go(s: Any) -> Any:
        p = await control.find_project(s, project)
        return await control.archive_project(s, control.CLI_ACTOR, p.id)

    p = run_store(settings(), go, write=True)
    if json:
        print_json(shapes.project(p))
    else:
        out.print(f"archived project {p.id} ({p.name})", markup=False)
