"""`keyplane users ...` and `keyplane audit` (registered by keyplane.cli.registry)."""

from typing import Annotated, Any

import typer

from keyplane import control
from keyplane.admin import shapes
from keyplane.cli.common import JsonOpt, out, print_json, run_store, settings, table, ts

UserArg = Annotated[str, typer.Argument(help="User id (user-...) or email.")]


def add(
    email: Annotated[str, typer.Argument(help="Email address.")],
    role: Annotated[str, typer.Option(help="owner or reader.")] = "reader",
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    json: JsonOpt = False,
) -> None:
    """Add a user to the organization."""
    u = run_store(
        settings(), lambda s: control.add_user(s, control.CLI_ACTOR, email=email, role=role, name=name), write=True
    )
    if json:
        print_json(shapes.user(u))
    else:
        out.print(f"added {u.email} as {u.role} ({u.id})", markup=False)


def list_(json: JsonOpt = False) -> None:
    """List users."""

    async def go(s: Any) -> list[Any]:
        return await control.all_users(s)

    rows = run_store(settings(), go)
    if json:
        print_json([shapes.user(u) for u in rows])
        return
    table(
        "Users",
        ["id", "email", "name", "role", "added"],
        [(u.id, u.email, u.name, u.role, ts(u.added_at)) for u in rows],
    )


def role(
    user: UserArg,
    role: Annotated[str, typer.Argument(help="owner or reader.")],
    json: JsonOpt = False,
) -> None:
    """Change a user's role (the organization keeps at least one owner)."""

    async def go(s: Any) -> Any:
        u = await control.find_user(s, user)
        return await control.update_user_role(s, control.CLI_ACTOR, u.id, role)

    u = run_store(settings(), go, write=True)
    if json:
        print_json(shapes.user(u))
    else:
        out.print(f"{u.email} is now {u.role}", markup=False)


def remove(user: UserArg, json: JsonOpt = False) -> None:
    """Remove a user; their user keys are revoked, service accounts are untouched."""

    async def go(s: Any) -> str:
        u = await control.find_user(s, user)
        await control.delete_user(s, control.CLI_ACTOR, u.id)
        return u.id

    uid = run_store(settings(), go, write=True)
    if json:
        print_json(shapes.deleted("organization.user", uid))
    else:
        out.print(f"removed {uid}", markup=False)


def audit(
    type: Annotated[
        list[str] | None, typer.Option("--type", "-t", help="Event type (repeatable), e.g. api_key.created.")
    ] = None,
    project: Annotated[str | None, typer.Option("--project", "-p", help="Project id.")] = None,
    limit: Annotated[int, typer.Option(help="How many entries, newest first.", min=1, max=10000)] = 50,
    json: JsonOpt = False,
) -> None:
    """Show the audit log, newest first."""

    async def go(s: Any) -> list[Any]:
        rows, _ = await control.list_audit_logs(
            s, limit=limit, event_types=type or (), project_ids=(project,) if project else ()
        )
        return rows

    rows = run_store(settings(), go)
    if json:
        print_json([shapes.audit_log(r, None) for r in rows])
        return
    table(
        "Audit log",
        ["when (UTC)", "type", "actor", "project", "resource"],
        [(ts(r.effective_at), r.type, r.actor_id or _actor_type(r.actor), r.project_id, r.resource_id) for r in rows],
    )


def _actor_type(raw: str) -> str:
    import orjson

    return str(orjson.loads(raw).get("type"))
