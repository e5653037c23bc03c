"""`keyplane objects ...` (registered by keyplane.cli.registry)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keyplane import control
from keyplane.cli.common import JsonOpt, out, print_json, run_store, settings


def assign(
    object_id: Annotated[str, typer.Argument(help="The provider's id: pmpt_..., ft:..., file-...")],
    project: Annotated[str, typer.Argument(help="Project id or unique name.")],
    kind: Annotated[
        str | None, typer.Option("--kind", help="What it is (default from the id: prompt, model, file...).")
    ] = None,
    upstream: Annotated[
        str | None, typer.Option("--upstream", help="The upstream whose provider account holds it (its name).")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Assign a provider object keyplane never saw created (a stored prompt made in the provider's dashboard, a
    fine-tuned model...) to a project: that project, and no other, may then name it (docs/proxy.md)."""
    from keyplane.admin import shapes
    from keyplane.proxy.router import default_upstreams

    s = settings()
    names = [u.name for u in (s.file.upstreams or default_upstreams())]

    async def go(session: Any) -> tuple[Any, bool]:
        p = await control.find_project(session, project)
        return await control.assign_provider_object(
            session, control.CLI_ACTOR, object_id, p.id, kind=kind, upstream=upstream, upstreams=names
        )

    row, fresh = run_store(s, go, write=True)
    if json:
        print_json(shapes.provider_object(row, object_id))
    elif fresh:
        out.print(f"assigned {object_id} ({row.object}) to project {row.project_id}", markup=False, soft_wrap=True)
    else:
        out.print(f"{object_id} is already owned by project {row.project_id}", markup=False, soft_wrap=True)
