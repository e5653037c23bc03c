"""`keyplane invites ...` and `keyplane members ...` (project members), registered by keyplane.cli."""

from typing import Annotated, Any

import typer

from keyplane import control
from keyplane.cli.common import JsonOpt, out, print_json, run_store, settings, table, ts
from keyplane.members import invites, ops
from keyplane.members.models import Invite
from keyplane.members.routes import project_user


def create(
    email: Annotated[str, typer.Argument(help="Email address of the person to invite.")],
    role: Annotated[str, typer.Option(help="Organization role: owner or reader.")] = "reader",
    project: Annotated[
        list[str] | None,
        typer.Option(
            help="PROJECT_ID[:owner|member] to join on acceptance (repeatable). None given: the default "
            "project; give --no-projects for none."
        ),
    ] = None,
    no_projects: Annotated[bool, typer.Option(help="Join no project.")] = False,
    base_url: Annotated[
        str | None,
        typer.Option(help="The dashboard's address for the link (default: http://HOST:PORT of the settings)."),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Create an invite and print its one-time link (valid 7 days; no e-mail is sent)."""
    s = settings()
    projects: list[dict[str, str]] | None = None
    if no_projects:
        projects = []
    elif project:
        projects = [{"id": p.split(":", 1)[0], "role": p.split(":", 1)[1] if ":" in p else "member"} for p in project]
    inv, token = run_store(
        s,
        lambda db: invites.create_invite(
            db, control.CLI_ACTOR, s.secret_key, email=email, role=role, projects=projects
        ),
        write=True,
    )
    url = (base_url or f"http://{s.host}:{s.port}").rstrip("/") + invites.ACCEPT_PATH + token
    if json:
        print_json({**invites.shape(inv, control.now_s()), "accept_url": url})
    else:
        out.print(
            f"invited {inv.email} as {inv.role} ({inv.id}); send them this one-time link (valid 7 days):\n{url}",
            markup=False,
        )


def list_(json: JsonOpt = False) -> None:
    """List invites (pending, accepted, expired)."""

    async def go(db: Any) -> list[Invite]:
        return await invites.all_invites(db)

    rows = run_store(settings(), go)
    now = control.now_s()
    if json:
        print_json([invites.shape(i, now) for i in rows])
        return
    table(
        "Invites",
        ["id", "email", "role", "status", "created", "expires"],
        [(i.id, i.email, i.role, invites.status(i, now), ts(i.created_at), ts(i.expires_at)) for i in rows],
    )


def delete(invite_id: Annotated[str, typer.Argument(help="Invite id (invite-...).")]) -> None:
    """Delete a pending invite: its link stops working."""
    run_store(settings(), lambda db: invites.delete_invite(db, control.CLI_ACTOR, invite_id), write=True)
    out.print(f"deleted invite {invite_id}", markup=False)


ProjectArg = Annotated[str, typer.Argument(help="Project id or unique name.")]
UserArg = Annotated[str, typer.Argument(help="User id (user-...) or email.")]


def add(
    project: ProjectArg,
    user: UserArg,
    role: Annotated[str, typer.Option(help="owner or member.")] = "member",
    json: JsonOpt = False,
) -> None:
    """Add an organization user to a project."""

    async def go(db: Any) -> Any:
        p, u = await control.find_project(db, project), await control.find_user(db, user)
        return await ops.add_project_user(db, control.CLI_ACTOR, p.id, role=role, user_id=u.id)

    m, u = run_store(settings(), go, write=True)
    if json:
        print_json(project_user(m, u))
    else:
        out.print(f"{u.email} is now {m.role} of {m.project_id}", markup=False)


def members(project: ProjectArg, json: JsonOpt = False) -> None:
    """List a project's members (organization owners reach every project without being listed)."""

    async def go(db: Any) -> Any:
        p = await control.find_project(db, project)
        rows, _ = await ops.list_project_users(db, p.id, after=None, limit=10_000)
        return rows

    rows = run_store(settings(), go)
    if json:
        print_json([project_user(m, u) for m, u in rows])
        return
    table(
        "Project members",
        ["id", "email", "role", "added"],
        [(u.id, u.email, m.role, ts(m.added_at)) for m, u in rows],
    )


def remove(project: ProjectArg, user: UserArg) -> None:
    """Remove a user from a project: their user keys in it are revoked at once."""

    async def go(db: Any) -> int:
        p, u = await control.find_project(db, project), await control.find_user(db, user)
        return await ops.remove_project_user(db, control.CLI_ACTOR, p.id, u.id)

    n = run_store(settings(), go, write=True)
    out.print(f"removed; {n} key(s) revoked", markup=False)
