"""The Keys pages of a project: create, permissions, rotate, revoke, suspend, resume. Owners only for changes.

Every change goes through keyplane.control with the signed-in user as a ``session`` actor. A key value
appears once, in the dialog answering its creation or rotation, and nowhere else.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from keyplane import control
from keyplane.members import ops as members
from keyplane.scopes import AREAS
from keyplane.store.models import ApiKey
from keyplane.web import data
from keyplane.web.base import Ctx, Refused, error_page, view
from keyplane.web.manage import EXPIRY, _owner, _problem, _project_page, _status

# --- keys --------------------------------------------------------------------------------------


def _perms_from_form(ctx: Ctx) -> str | list[str]:
    return data.permissions_from_form(ctx.field("mode"), {a: ctx.field(f"area_{a}") for a in AREAS})


async def _secret_answer(ctx: Ctx, pid: str, secret: dict[str, Any]) -> Response:
    """The once-only dialog: a fragment for htmx, else the whole project page with the dialog open."""
    r: Response
    if ctx.is_htmx:
        r = ctx.render("_secret.html", secret=secret)
    else:
        r = await _project_page(ctx, pid, secret=secret)
    r.headers["cache-control"] = "no-store"
    return r


@view(owner=True)
async def key_create(ctx: Ctx) -> Response:
    pid = ctx.request.path_params["pid"]
    assert ctx.user is not None
    try:
        perms = _perms_from_form(ctx)
    except data.PermissionsError as e:
        return _problem(ctx, str(e))
    kind = ctx.field("kind", "user")
    expiry = EXPIRY.get(ctx.field("expires", "never"))
    secret_key = ctx.rt.settings.secret_key
    try:
        async with ctx.rt.write() as s:
            if kind == "service_account":
                p = await control.get_project(s, pid)
                sa, value = await control.create_service_account(
                    s, ctx.actor, p, ctx.field("name"), secret=secret_key, expires_in_seconds=expiry
                )
                key_id = sa.api_key_id  # type: ignore[attr-defined]
                if perms != "all":
                    await control.update_key(s, ctx.actor, key_id, project_id=pid, permissions=perms)
                name = sa.name
            else:
                row, value = await control.create_project_key(
                    s,
                    ctx.actor,
                    secret_key,
                    pid,
                    name=ctx.field("name"),
                    owner_user_id=ctx.user.id,
                    permissions=perms,
                    expires_in_seconds=expiry,
                )
                key_id, name = row.id, row.name
    except Refused as e:
        return _problem(ctx, e.message)
    return await _secret_answer(
        ctx,
        pid,
        {
            "title": "Your new key",
            "name": name,
            "id": key_id,
            "value": value,
            "kind": "key",
            "back": f"/projects/{pid}",
        },
    )


async def _key(ctx: Ctx, s: Any) -> ApiKey:
    return await control.get_key(s, ctx.request.path_params["kid"], ctx.request.path_params["pid"], "project")


@view()
async def key_page(ctx: Ctx) -> Response:
    pid = ctx.request.path_params["pid"]
    async with ctx.rt.read() as s:
        try:
            k = await _key(ctx, s)
            p = await control.get_project(s, pid)
            await members.ensure_reachable(s, ctx.user, pid)
        except Refused:
            return error_page(ctx, 404, "Not found", "There is no such key in this project.")
        users, sas = await control.key_owners(s, [k])
    perms = data.permissions_from(k.permissions)
    return ctx.render(
        "key.html",
        nav="projects",
        p=p,
        k=k,
        key_status=_status(k, ctx.rt.clock.now()),
        owner=_owner(k, users, sas),
        perms=data.summary(perms),
        areas=AREAS,
        levels=data.area_levels(perms),
        mode=perms.mode,
    )


@view(owner=True)
async def key_permissions(ctx: Ctx) -> Response:
    pid, kid = ctx.request.path_params["pid"], ctx.request.path_params["kid"]
    try:
        perms = _perms_from_form(ctx)
        async with ctx.rt.write() as s:
            k = await control.update_key(
                s, ctx.actor, kid, project_id=pid, permissions=perms, name=ctx.field("name") or None
            )
    except data.PermissionsError as e:
        return _problem(ctx, str(e))
    except Refused as e:
        return _problem(ctx, e.message)
    return ctx.redirect(f"/projects/{pid}", f"Permissions of “{k.name}” updated; the key value is unchanged.")


@view(owner=True)
async def key_rotate(ctx: Ctx) -> Response:
    pid, kid = ctx.request.path_params["pid"], ctx.request.path_params["kid"]
    grace = {"0": 0, "1h": 3600, "24h": 86400}.get(ctx.field("grace", "0"), 0)
    try:
        async with ctx.rt.write() as s:
            new, value, _old = await control.rotate_key(
                s, ctx.actor, ctx.rt.settings.secret_key, kid, project_id=pid, grace_seconds=grace
            )
    except Refused as e:
        return _problem(ctx, e.message)
    note = "The old key stops working now." if not grace else "The old key keeps working during the grace period."
    return await _secret_answer(
        ctx,
        pid,
        {
            "title": "The rotated key",
            "name": new.name,
            "id": new.id,
            "value": value,
            "kind": "key",
            "note": note,
            "back": f"/projects/{pid}",
        },
    )


async def _key_change(ctx: Ctx, action: str) -> Response:
    pid = ctx.request.path_params["pid"]
    reason = ctx.field("reason")[:500]
    try:
        async with ctx.rt.write() as s:
            k = await _key(ctx, s)
            if action == "revoke":
                await control.revoke_key(s, ctx.actor, k, reason or "revoked from the dashboard")
            else:
                await control.set_suspended(
                    s, ctx.actor, k, (reason or "suspended from the dashboard") if action == "suspend" else None
                )
    except Refused as e:
        return _problem(ctx, e.message)
    done = {"revoke": "revoked", "suspend": "suspended", "resume": "resumed"}[action]
    return ctx.redirect(f"/projects/{pid}", f"Key “{k.name}” {done}.")


@view(owner=True)
async def key_revoke(ctx: Ctx) -> Response:
    return await _key_change(ctx, "revoke")


@view(owner=True)
async def key_suspend(ctx: Ctx) -> Response:
    return await _key_change(ctx, "suspend")


@view(owner=True)
async def key_resume(ctx: Ctx) -> Response:
    return await _key_change(ctx, "resume")


ROUTES = [
    Route("/projects/{pid}/keys", key_create, methods=["POST"]),
    Route("/projects/{pid}/keys/{kid}", key_page, methods=["GET"]),
    Route("/projects/{pid}/keys/{kid}/permissions", key_permissions, methods=["POST"]),
    Route("/projects/{pid}/keys/{kid}/rotate", key_rotate, methods=["POST"]),
    Route("/projects/{pid}/keys/{kid}/revoke", key_revoke, methods=["POST"]),
    Route("/projects/{pid}/keys/{kid}/suspend", key_suspend, methods=["POST"]),
    Route("/projects/{pid}/keys/{kid}/resume", key_resume, methods=["POST"]),
]
