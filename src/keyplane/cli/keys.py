"""`keyplane keys ...`: local key management on the store (registered by keyplane.cli.registry)."""

from collections.abc import Sequence
from typing import Annotated, Any

import orjson
import typer

from keyplane import control
from keyplane.cli.common import JsonOpt, fail, out, print_json, run_store, settings, table, ts
from keyplane.store.models import ApiKey

ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project id or unique name.")]


async def _key_dicts(session: Any, rows: Sequence[ApiKey], now: float) -> list[dict[str, Any]]:
    """The admin API's shapes for ``rows``, with their owners (user or service account) read from the store."""
    from keyplane.admin import shapes

    users, sas = await control.key_owners(session, rows)
    out = []
    for r in rows:
        owner = users.get(r.owner_user_id or "")
        if r.kind == "admin":
            out.append(shapes.admin_key(r, owner, now))
        else:
            out.append(shapes.project_key(r, owner, sas.get(r.service_account_id or ""), now))
    return out


async def _with_dict(session: Any, row: ApiKey) -> tuple[ApiKey, dict[str, Any]]:
    import time

    await session.flush()
    return row, (await _key_dicts(session, [row], time.time()))[0]


def _emit_key(
    found: tuple[ApiKey, dict[str, Any]], json: bool, value: str | None = None, verb: str = "created"
) -> None:
    row, d = found
    if value is not None:
        d["value"] = value
    if json:
        print_json(d)
        return
    out.print(f"{verb} key {row.id} ({row.name}) in {row.project_id or 'the organization'}", markup=False)
    if value is not None:
        out.print("[bold]The key is shown once. Store it now:[/]")
        out.print(f"  {value}", highlight=False, soft_wrap=True)


def create(
    project: ProjectOpt,
    name: Annotated[str, typer.Option("--name", "-n", help="Key name (shown in reports).")],
    permissions: Annotated[
        str,
        typer.Option(help='"all", "read_only" or comma-separated scopes, e.g. "api.model.request,api.model.read".'),
    ] = "all",
    expires_in: Annotated[int | None, typer.Option(help="Seconds until the key expires.", min=1)] = None,
    service_account: Annotated[
        bool,
        typer.Option(
            "--service-account", help="Create a service account with this name and its key (survives any user)."
        ),
    ] = False,
    owner: Annotated[str | None, typer.Option(help="Owner user id or email (user keys).")] = None,
    json: JsonOpt = False,
) -> None:
    """Create a user key (or a service account and its key) in a project. The value is shown once."""
    s = settings()

    async def go(session: Any) -> tuple[tuple[ApiKey, dict[str, Any]], str]:
        p = await control.find_project(session, project)
        if service_account:
            if permissions != "all":
                control.check_permissions(permissions)
            sa, value = await control.create_service_account(
                session, control.CLI_ACTOR, p, name, secret=s.secret_key, expires_in_seconds=expires_in
            )
            row = sa.api_key_row  # type: ignore[attr-defined]
            if permissions != "all":
                row = await control.update_key(session, control.CLI_ACTOR, row.id, permissions=permissions)
            return await _with_dict(session, row), value
        owner_id = (await control.find_user(session, owner)).id if owner else None
        row, value = await control.create_project_key(
            session,
            control.CLI_ACTOR,
            s.secret_key,
            p.id,
            name=name,
            owner_user_id=owner_id,
            permissions=permissions,
            expires_in_seconds=expires_in,
        )
        return await _with_dict(session, row), value

    found, value = run_store(s, go, write=True)
    _emit_key(found, json, value)


def create_admin(
    name: Annotated[str, typer.Option("--name", "-n", help="Key name (shown in reports).")],
    role: Annotated[
        str, typer.Option(help='"owner" (every admin API call) or "reader" (read-only admin API calls).')
    ] = "owner",
    expires_in: Annotated[int | None, typer.Option(help="Seconds until the key expires.", min=1)] = None,
    json: JsonOpt = False,
) -> None:
    """Create an admin key (the admin API's, owned by the organization's owner). The value is shown once: the way
    back in when init's admin key is lost (whoever runs this has the store, and so the organization, already)."""
    s = settings()
    if role not in ("owner", "reader"):
        raise fail("--role must be owner or reader.")

    async def go(session: Any) -> tuple[tuple[ApiKey, dict[str, Any]], str]:
        row, value = await control.create_admin_key(
            session, control.CLI_ACTOR, s.secret_key, name, expires_in_seconds=expires_in, role=role
        )
        return await _with_dict(session, row), value

    found, value = run_store(s, go, write=True)
    _emit_key(found, json, value)


def list_(
    project: Annotated[str | None, typer.Option("--project", "-p", help="Project id or name (default: all).")] = None,
    all: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    admin: Annotated[bool, typer.Option("--admin", help="List admin keys instead.")] = False,
    json: JsonOpt = False,
) -> None:
    """List keys with their status, permissions and last use (never their values)."""
    import time

    async def go(session: Any) -> tuple[list[ApiKey], list[dict[str, Any]]]:
        project_id = (await control.find_project(session, project)).id if project else None
        found = await control.all_keys(session, project_id=project_id, admin=admin, include_revoked=all)
        return found, await _key_dicts(session, found, time.time())

    rows, items = run_store(settings(), go)
    if json:
        print_json(items)
        return
    table(
        "Keys",
        ["id", "name", "kind", "project", "key", "permissions", "status", "last used"],
        [
            (
                r.id,
                r.name,
                r.kind,
                r.project_id,
                r.redacted_value,
                _perm_text(r.permissions),
                d["status"],
                ts(r.last_used_at),
            )
            for r, d in zip(rows, items, strict=True)
        ],
    )


def revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (key_...).")],
    reason: Annotated[
        str, typer.Option(help="Why (kept in the audit log and shown to the key's user).")
    ] = "revoked from the command line",
    json: JsonOpt = False,
) -> None:
    """Revoke a key for good. It is refused by every instance within a second."""

    async def go(session: Any) -> tuple[ApiKey, dict[str, Any]]:
        row = await control.get_key(session, key_id)
        return await _with_dict(session, await control.revoke_key(session, control.CLI_ACTOR, row, reason))

    _emit_key(run_store(settings(), go, write=True), json, verb="revoked")


def rotate(
    key_id: Annotated[str, typer.Argument(help="Key id (key_...).")],
    grace: Annotated[int, typer.Option(help="Seconds the old value keeps working (0: revoked now).", min=0)] = 0,
    json: JsonOpt = False,
) -> None:
    """Issue a new value for a key (same name, project, permissions); the old one stops now or after --grace."""
    s = settings()

    async def go(session: Any) -> tuple[tuple[ApiKey, dict[str, Any]], str]:
        new, value, _old = await control.rotate_key(
            session, control.CLI_ACTOR, s.secret_key, key_id, grace_seconds=grace
        )
        return await _with_dict(session, new), value

    found, value = run_store(s, go, write=True)
    _emit_key(found, json, value, verb="rotated to")


def permissions_(
    key_id: Annotated[str, typer.Argument(help="Key id (key_...).")],
    permissions: Annotated[str, typer.Argument(help='"all", "read_only" or comma-separated scopes.')],
    json: JsonOpt = False,
) -> None:
    """Change a key's permissions without issuing a new key."""

    async def go(session: Any) -> tuple[ApiKey, dict[str, Any]]:
        return await _with_dict(
            session, await control.update_key(session, control.CLI_ACTOR, key_id, permissions=permissions)
        )

    _emit_key(run_store(settings(), go, write=True), json, verb="updated")


def suspend(
    key_id: Annotated[str, typer.Argument(help="Key id (key_...).")],
    reason: Annotated[str, typer.Option(help="Why.")] = "suspended from the command line",
    json: JsonOpt = False,
) -> None:
    """Suspend a key (reversible with `keyplane keys resume`)."""

    async def go(session: Any) -> tuple[ApiKey, dict[str, Any]]:
        row = await control.get_key(session, key_id)
        return await _with_dict(session, await control.set_suspended(session, control.CLI_ACTOR, row, reason))

    _emit_key(run_store(settings(), go, write=True), json, verb="suspended")


def resume(key_id: Annotated[str, typer.Argument(help="Key id (key_...).")], json: JsonOpt = False) -> None:
    """Resume a suspended key (for example one the kill switch suspended)."""

    async def go(session: Any) -> tuple[ApiKey, dict[str, Any]]:
        row = await control.get_key(session, key_id)
        return await _with_dict(session, await control.set_suspended(session, control.CLI_ACTOR, row, None))

    _emit_key(run_store(settings(), go, write=True), json, verb="resumed")


def _perm_text(raw: str) -> str:
    v = orjson.loads(raw)
    return v if isinstance(v, str) else ",".join(v)
