"""Roles & groups pages: custom roles (create, change, delete, assign to users), groups (create, rename,
delete, members, roles) (docs/members-and-roles.md "Custom roles and groups").

Every change goes through keyplane.members.roles, the functions behind the admin API's roles and groups
routes, with the signed-in user as a ``session`` actor and the user's effective permissions as the caller's
(``Ctx.granted``): the same no-escalation checks and audit events as the API. Changing needs the permission
of the twin admin call (api.organization.write); anyone who may read sees the pages. Bad input re-renders
the page with the error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from keyplane import control
from keyplane.members import groups as group_svc
from keyplane.members import permissions
from keyplane.members import roles as svc
from keyplane.members.models import Group
from keyplane.store.models import User
from keyplane.web.base import Ctx, Refused, error_page, not_permitted, refused_status, view

ROLES_API = "/v1/organization/roles"
GROUPS_API = "/v1/organization/groups"

Apply = Callable[[Any], Awaitable[str]]


# --- roles: the page -------------------------------------------------------------------------------


async def _roles_page(
    ctx: Ctx, *, error: str | None = None, draft: dict[str, Any] | None = None, status: int = 200
) -> Response:
    async with ctx.rt.read() as s:
        all_roles = await svc.all_roles(s)
        users = await control.all_users(s)
        groups = await group_svc.all_groups(s)
        direct: dict[str, list[User]] = {}
        for u in users:
            for r in await svc.roles_of_user(s, u):
                if any(src["principal_type"] == "user" for src in r["assignment_sources"]) and not r["predefined_role"]:
                    direct.setdefault(r["id"], []).append(u)
        by_group: dict[str, list[Group]] = {}
        group_rows = []
        for g in groups:
            held = await svc.roles_of_group(s, g.id)
            for r in held:
                by_group.setdefault(r["id"], []).append(g)
            group_rows.append({"g": g, "roles": held, "members": len(await group_svc.group_users(s, g.id))})
    custom = [r for r in all_roles if not r["predefined_role"]]
    return ctx.render(
        "roles.html",
        status=status,
        nav="roles",
        roles=all_roles,
        custom=custom,
        users=users,
        direct=direct,
        by_group=by_group,
        groups=group_rows,
        perms=permissions.PERMISSIONS,
        can_change=ctx.may("POST", ROLES_API),
        can_groups=ctx.may("POST", GROUPS_API),
        error=error,
        draft=draft or {},
    )


@view()
async def roles_page(ctx: Ctx) -> Response:
    return not_permitted(ctx, "GET", ROLES_API) or await _roles_page(ctx)


async def _on_roles_page(
    ctx: Ctx,
    api_path: str,
    apply: Apply,
    draft: dict[str, Any] | None = None,
    method: str = "POST",
    back: str = "/roles",
) -> Response:
    """Check the twin call's permission, run ``apply(session)`` in one transaction (it returns the message
    shown after the redirect); a refusal (web.base.Refused) re-renders the Roles page with it."""
    refused = not_permitted(ctx, method, api_path)
    if refused is not None:
        return refused
    try:
        async with ctx.rt.write() as s:
            done = await apply(s)
    except Refused as e:
        return await _roles_page(ctx, error=e.message, draft=draft, status=refused_status(e))
    return ctx.redirect(back, done)


def _role_form(ctx: Ctx) -> dict[str, Any]:
    return {
        "role_name": ctx.field("role_name"),
        "description": ctx.field("description") or None,
        "permissions": ctx.fields("permissions"),
    }


# --- roles: the changes ----------------------------------------------------------------------------


@view()
async def role_create(ctx: Ctx) -> Response:
    form = _role_form(ctx)

    async def apply(s: Any) -> str:
        r = await svc.create_role(
            s,
            ctx.actor,
            ctx.granted,
            role_name=form["role_name"],
            perms=form["permissions"],
            description=form["description"],
        )
        return f"Role “{r.name}” created."

    return await _on_roles_page(ctx, ROLES_API, apply, draft=form)


@view()
async def role_update(ctx: Ctx) -> Response:
    rid = ctx.request.path_params["rid"]
    form = _role_form(ctx)

    async def apply(s: Any) -> str:
        r = await svc.update_role(
            s,
            ctx.actor,
            ctx.granted,
            rid,
            role_name=form["role_name"],
            perms=form["permissions"],
            description=form["description"],
            description_given=True,
        )
        return f"Role “{r.name}” saved: its holders have its permissions on their next call."

    return await _on_roles_page(ctx, f"{ROLES_API}/{rid}", apply)


@view()
async def role_delete(ctx: Ctx) -> Response:
    rid = ctx.request.path_params["rid"]

    async def apply(s: Any) -> str:
        name = (await svc.custom_role(s, rid)).name if rid not in svc.PREDEFINED else rid
        n = await svc.delete_role(s, ctx.actor, rid)
        return f"Role “{name}” deleted ({n} assignment{'s' if n != 1 else ''} removed with it)."

    return await _on_roles_page(ctx, f"{ROLES_API}/{rid}", apply, method="DELETE")


@view()
async def role_assign_user(ctx: Ctx) -> Response:
    rid, uid = ctx.request.path_params["rid"], ctx.field("user_id")

    async def apply(s: Any) -> str:
        u = await control.get_user(s, uid)
        r = await svc.assign(s, ctx.actor, ctx.granted, rid, "user", u.id)
        return f"{u.email} now holds the role “{r.name}”."

    return await _on_roles_page(ctx, f"/v1/organization/users/{uid}/roles", apply)


@view()
async def role_unassign_user(ctx: Ctx) -> Response:
    rid, uid = ctx.request.path_params["rid"], ctx.request.path_params["uid"]

    async def apply(s: Any) -> str:
        u = await control.get_user(s, uid)
        await svc.unassign(s, ctx.actor, rid, "user", u.id)
        return f"{u.email} no longer holds the role directly."

    return await _on_roles_page(ctx, f"/v1/organization/users/{uid}/roles/{rid}", apply, method="DELETE")


# --- groups ----------------------------------------------------------------------------------------


@view()
async def group_create(ctx: Ctx) -> Response:
    refused = not_permitted(ctx, "POST", GROUPS_API)
    if refused is not None:
        return refused
    name = ctx.field("name")
    try:
        async with ctx.rt.write() as s:
            g = await group_svc.create_group(s, ctx.actor, name)
            gid, done = g.id, f"Group “{g.name}” created. Add its users and roles below."
    except Refused as e:
        return await _roles_page(ctx, error=e.message, draft={"group_name": name}, status=refused_status(e))
    return ctx.redirect(f"/groups/{gid}", done)


async def _group_page(ctx: Ctx, *, error: str | None = None, status: int = 200) -> Response:
    gid = ctx.request.path_params["gid"]
    async with ctx.rt.read() as s:
        try:
            g = await group_svc.get_group(s, gid)
        except Refused:
            return error_page(ctx, 404, "Not found", f"There is no group with id {gid}.")
        members = await group_svc.group_users(s, gid)
        held = await svc.roles_of_group(s, gid)
        users = await control.all_users(s)
        custom = [r for r in await svc.all_roles(s) if not r["predefined_role"]]
        projects = await group_svc.projects_of_group(s, gid)
        perms = await group_svc.group_permissions(s, gid)
    in_group = {u.id for u in members}
    has_role = {r["id"] for r in held}
    return ctx.render(
        "group.html",
        status=status,
        nav="roles",
        g=g,
        members=members,
        held=held,
        perms=perms,
        projects=projects,
        free_users=[u for u in users if u.id not in in_group],
        free_roles=[r for r in custom if r["id"] not in has_role],
        can_change=ctx.may("POST", f"{GROUPS_API}/{gid}"),
        error=error,
    )


@view()
async def group_page(ctx: Ctx) -> Response:
    return not_permitted(ctx, "GET", f"{GROUPS_API}/{ctx.request.path_params['gid']}") or await _group_page(ctx)


async def _on_group_page(
    ctx: Ctx, api_path: str, apply: Apply, method: str = "POST", back: str | None = None
) -> Response:
    gid = ctx.request.path_params["gid"]
    refused = not_permitted(ctx, method, api_path)
    if refused is not None:
        return refused
    try:
        async with ctx.rt.write() as s:
            done = await apply(s)
    except Refused as e:
        return await _group_page(ctx, error=e.message, status=refused_status(e))
    return ctx.redirect(back or f"/groups/{gid}", done)


@view()
async def group_rename(ctx: Ctx) -> Response:
    gid = ctx.request.path_params["gid"]

    async def apply(s: Any) -> str:
        g = await group_svc.update_group(s, ctx.actor, gid, ctx.field("name"))
        return f"Group renamed “{g.name}”."

    return await _on_group_page(ctx, f"{GROUPS_API}/{gid}", apply)


@view()
async def group_delete(ctx: Ctx) -> Response:
    gid = ctx.request.path_params["gid"]

    async def apply(s: Any) -> str:
        g = await group_svc.get_group(s, gid)
        await group_svc.delete_group(s, ctx.actor, gid)
        return f"Group “{g.name}” deleted: its members lost its roles and projects."

    return await _on_group_page(ctx, f"{GROUPS_API}/{gid}", apply, method="DELETE", back="/roles#groups")


@view()
async def group_user_add(ctx: Ctx) -> Response:
    gid = ctx.request.path_params["gid"]

    async def apply(s: Any) -> str:
        m = await group_svc.add_group_user(s, ctx.actor, ctx.granted, gid, ctx.field("user_id"))
        u = await control.get_user(s, m.user_id)
        return f"{u.email} added to the group."

    return await _on_group_page(ctx, f"{GROUPS_API}/{gid}/users", apply)


@view()
async def group_user_remove(ctx: Ctx) -> Response:
    gid, uid = ctx.request.path_params["gid"], ctx.request.path_params["uid"]

    async def apply(s: Any) -> str:
        await group_svc.remove_group_user(s, ctx.actor, gid, uid)
        return "User removed from the group."

    return await _on_group_page(ctx, f"{GROUPS_API}/{gid}/users/{uid}", apply, method="DELETE")


@view()
async def group_role_assign(ctx: Ctx) -> Response:
    gid = ctx.request.path_params["gid"]
    rid = ctx.field("role_id")

    async def apply(s: Any) -> str:
        g = await group_svc.get_group(s, gid)
        r = await svc.assign(s, ctx.actor, ctx.granted, rid, "group", g.id)
        return f"The group now holds the role “{r.name}”."

    return await _on_group_page(ctx, f"{GROUPS_API}/{gid}/roles", apply)


@view()
async def group_role_remove(ctx: Ctx) -> Response:
    gid, rid = ctx.request.path_params["gid"], ctx.request.path_params["rid"]

    async def apply(s: Any) -> str:
        g = await group_svc.get_group(s, gid)
        await svc.unassign(s, ctx.actor, rid, "group", g.id)
        return "Role removed from the group."

    return await _on_group_page(ctx, f"{GROUPS_API}/{gid}/roles/{rid}", apply, method="DELETE")


ROUTES = [
    Route("/roles", roles_page, methods=["GET"]),
    Route("/roles", role_create, methods=["POST"]),
    Route("/roles/{rid}", role_update, methods=["POST"]),
    Route("/roles/{rid}/delete", role_delete, methods=["POST"]),
    Route("/roles/{rid}/users", role_assign_user, methods=["POST"]),
    Route("/roles/{rid}/users/{uid}/remove", role_unassign_user, methods=["POST"]),
    Route("/groups", group_create, methods=["POST"]),
    Route("/groups/{gid}", group_page, methods=["GET"]),
    Route("/groups/{gid}", group_rename, methods=["POST"]),
    Route("/groups/{gid}/delete", group_delete, methods=["POST"]),
    Route("/groups/{gid}/users", group_user_add, methods=["POST"]),
    Route("/groups/{gid}/users/{uid}/remove", group_user_remove, methods=["POST"]),
    Route("/groups/{gid}/roles", group_role_assign, methods=["POST"]),
    Route("/groups/{gid}/roles/{rid}/remove", group_role_remove, methods=["POST"]),
]
