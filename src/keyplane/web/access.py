"""Access pages: the organization's IP allowlist (and every policy set), a project's and a key's model
permissions, hosted tool permissions and IP allowlist (docs/access-control.md).

Every change goes through keyplane.access.service, the functions behind the admin API's access routes, with
the signed-in user as a ``session`` actor: the same checks, the same audit events. Who may change what is the
admin API's rule for the twin call (``Ctx.may``): a project's or key's policies need api.project.write, the
organization's list api.organization.write; anyone who may read sees the pages. Bad input re-renders the
page with the error and what was typed.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response
from starlette.routing import Route

from keyplane import control
from keyplane.access import inspect, service
from keyplane.access.policy import Policies
from keyplane.members import groups as member_groups
from keyplane.members import ops as members
from keyplane.web.base import Ctx, Refused, error_page, not_permitted, refused_status, view

ORG_API = "/v1/organization/ip_allowlist"
TOOL_LABELS = {
    "code_interpreter": "Code interpreter",
    "file_search": "File search",
    "image_generation": "Image generation",
    "mcp": "Remote MCP servers",
    "web_search": "Web search",
}
_SPLIT = re.compile(r"[\s,]+")

Apply = Callable[[AsyncSession, service.Where], Awaitable[str | None]]


def _lines(raw: str) -> list[str]:
    """Entries typed one per line (commas and spaces separate too)."""
    return [x for x in _SPLIT.split(raw) if x]


def _seen(ctx: Ctx) -> str:
    """The client's address as the allowlists see it (behind ``trusted_proxies``: the forwarded one)."""
    pols: Policies | None = ctx.rt.features.access
    if pols is None:
        return ctx.ip
    return pols.address(ctx.request.scope.get("client"), ctx.request.scope["headers"])


# --- the organization: its IP allowlist, every policy set ------------------------------------------


async def _org_page(
    ctx: Ctx, *, error: str | None = None, draft: dict[str, Any] | None = None, status: int = 200
) -> Response:
    async with ctx.rt.read() as s:
        allowlist = await service.ip_allowlist(s, service.ORG)
        policies = await service.all_policies(s)
        keys = await control.keys_by_id(s, [p["id"] for p in policies if p["scope"] == "key"])
        projects = {p.id: p for p in await control.all_projects(s)}
        reach = await members.reachable_project_ids(s, ctx.user) if ctx.user is not None else None
    rows = []
    for p in policies:
        pid = p["id"] if p["scope"] == "project" else (keys[p["id"]].project_id if p["id"] in keys else None)
        if p["scope"] != "organization" and (pid is None or (reach is not None and pid not in reach)):
            continue  # a project they are not a member of is not shown to them (the member rule)
        rows.append(p | {"project": projects.get(pid or ""), "key": keys.get(p["id"] or "")})
    return ctx.render(
        "access.html",
        status=status,
        nav="access",
        allowlist=allowlist,
        policies=rows,
        seen=_seen(ctx),
        can_change=ctx.may("POST", ORG_API),
        error=error,
        draft=draft or {},
    )


@view()
async def access_page(ctx: Ctx) -> Response:
    return not_permitted(ctx, "GET", ORG_API) or await _org_page(ctx)


@view()
async def org_ip_set(ctx: Ctx) -> Response:
    refused = not_permitted(ctx, "POST", ORG_API)
    if refused is not None:
        return refused
    raw = ctx.field("cidrs")
    try:
        nets, normal = service.cidr_list(_lines(raw))
        service.check_lockout(service.ORG, nets, _seen(ctx), ctx.field("confirm_lockout") == "on")
        async with ctx.rt.write() as s:
            await service.set_ip_allowlist(s, ctx.actor, service.ORG, normal, int(ctx.rt.clock.now()))
    except Refused as e:
        return await _org_page(ctx, error=e.message, draft={"cidrs": raw}, status=refused_status(e))
    await service.changed(ctx.rt)
    done = "The organization's IP allowlist is saved." if normal else "The organization's IP allowlist is lifted."
    return ctx.redirect("/access", done)


@view()
async def org_ip_lift(ctx: Ctx) -> Response:
    refused = not_permitted(ctx, "DELETE", ORG_API)
    if refused is not None:
        return refused
    async with ctx.rt.write() as s:
        await service.delete_ip_allowlist(s, ctx.actor, service.ORG)
    await service.changed(ctx.rt)
    return ctx.redirect("/access", "The organization's IP allowlist is lifted.")


# --- a project's or a key's policies ----------------------------------------------------------------


def _ids(ctx: Ctx) -> tuple[str, str | None]:
    return ctx.request.path_params["pid"], ctx.request.path_params.get("kid")


def _api(pid: str, kid: str | None, what: str) -> str:
    """The admin API twin of a project's (or key's) policy: the path whose permission the change needs."""
    base = f"/v1/organization/projects/{pid}" + (f"/api_keys/{kid}" if kid else "")
    return f"{base}/{what}"


def _page_url(pid: str, kid: str | None) -> str:
    return f"/projects/{pid}" + (f"/keys/{kid}" if kid else "") + "/access"


async def _where(ctx: Ctx, s: AsyncSession) -> service.Where:
    """The policy's place; 404 for a project the user cannot reach (the member rule) or an unknown key."""
    pid, kid = _ids(ctx)
    await members.ensure_reachable(s, ctx.user, pid)
    return await service.target(s, pid, kid)


async def _target_page(
    ctx: Ctx, *, error: str | None = None, draft: dict[str, Any] | None = None, status: int = 200
) -> Response:
    pid, kid = _ids(ctx)
    async with ctx.rt.read() as s:
        try:
            where = await _where(ctx, s)
            p = await control.get_project(s, pid)
            k = await control.get_key(s, kid, pid, "project") if kid else None
        except Refused:
            return error_page(ctx, 404, "Not found", "There is no such project or key.")
        models = await service.model_permissions(s, where)
        tools = await service.tool_permissions(s, where)
        allowlist = await service.ip_allowlist(s, where)
        groups = await member_groups.project_groups(s, pid) if kid is None else []
        all_groups = await member_groups.all_groups(s) if kid is None else []
    member_ids = {g.id for _, g in groups}
    return ctx.render(
        "access_target.html",
        status=status,
        nav="projects",
        p=p,
        k=k,
        models=models,
        tools=tools,
        tool_labels=TOOL_LABELS,
        allowlist=allowlist,
        groups=groups,
        free_groups=[g for g in all_groups if g.id not in member_ids],
        url=_page_url(pid, kid),
        can_change=ctx.may("POST", _api(pid, kid, "model_permissions")),
        error=error,
        draft=draft or {},
    )


@view()
async def target_page(ctx: Ctx) -> Response:
    pid, kid = _ids(ctx)
    return not_permitted(ctx, "GET", _api(pid, kid, "model_permissions")) or await _target_page(ctx)


async def _change(ctx: Ctx, method: str, what: str, draft: dict[str, Any], done: str, apply: Apply) -> Response:
    """Check the permission of the twin call, run ``apply(s, where)`` in one transaction (it may return the
    message to show instead of ``done``), reload the policies. An unknown project or key is the 404 page; any
    other refusal (bad input, a missing group) re-renders the page with it and what was typed."""
    pid, kid = _ids(ctx)
    refused = not_permitted(ctx, method, _api(pid, kid, what))
    if refused is not None:
        return refused
    async with ctx.rt.read() as s:
        try:
            await _where(ctx, s)
        except Refused:
            return error_page(ctx, 404, "Not found", "There is no such project or key.")
    try:
        async with ctx.rt.write() as s:
            done = await apply(s, await _where(ctx, s)) or done
    except Refused as e:
        return await _target_page(ctx, error=e.message, draft=draft, status=refused_status(e))
    await service.changed(ctx.rt)
    return ctx.redirect(_page_url(pid, kid), done)


def _now(ctx: Ctx) -> int:
    return int(ctx.rt.clock.now())


@view()
async def models_set(ctx: Ctx) -> Response:
    raw, mode = ctx.field("model_ids"), ctx.field("mode")

    async def apply(s: AsyncSession, where: service.Where) -> None:
        pol = service.model_policy(mode, _lines(raw))
        await service.set_model_permissions(s, ctx.actor, where, pol, _now(ctx))

    return await _change(
        ctx, "POST", "model_permissions", {"model_ids": raw, "mode": mode}, "Model permissions saved.", apply
    )


@view()
async def models_delete(ctx: Ctx) -> Response:
    async def apply(s: AsyncSession, where: service.Where) -> None:
        await service.delete_model_permissions(s, ctx.actor, where)

    return await _change(
        ctx,
        "DELETE",
        "model_permissions",
        {},
        "Model permissions removed: every model is allowed again (within the project's own).",
        apply,
    )


@view()
async def tools_set(ctx: Ctx) -> Response:
    body = {t: {"enabled": ctx.field(f"tool_{t}") == "on"} for t in inspect.TOOLS}

    async def apply(s: AsyncSession, where: service.Where) -> None:
        await service.set_tool_permissions(s, ctx.actor, where, service.tool_changes(body), _now(ctx))

    return await _change(ctx, "POST", "hosted_tool_permissions", {}, "Hosted tool permissions saved.", apply)


@view()
async def ip_set(ctx: Ctx) -> Response:
    raw = ctx.field("cidrs")

    async def apply(s: AsyncSession, where: service.Where) -> None:
        _, normal = service.cidr_list(_lines(raw))
        await service.set_ip_allowlist(s, ctx.actor, where, normal, _now(ctx))

    return await _change(ctx, "POST", "ip_allowlist", {"cidrs": raw}, "IP allowlist saved.", apply)


@view()
async def ip_lift(ctx: Ctx) -> Response:
    async def apply(s: AsyncSession, where: service.Where) -> None:
        await service.delete_ip_allowlist(s, ctx.actor, where)

    return await _change(ctx, "DELETE", "ip_allowlist", {}, "IP allowlist lifted.", apply)


@view()
async def project_group_add(ctx: Ctx) -> Response:
    async def apply(s: AsyncSession, where: service.Where) -> str:
        _, g = await member_groups.add_project_group(s, ctx.actor, where[1], ctx.field("group_id"), ctx.field("role"))
        return f"Group “{g.name}” added: its users reach this project."

    return await _change(ctx, "POST", "groups", {}, "", apply)


@view()
async def project_group_remove(ctx: Ctx) -> Response:
    gid = ctx.request.path_params["gid"]

    async def apply(s: AsyncSession, where: service.Where) -> str:
        await member_groups.remove_project_group(s, ctx.actor, where[1], gid)
        return "Group removed from the project."

    return await _change(ctx, "DELETE", f"groups/{gid}", {}, "", apply)


def _routes(prefix: str) -> list[Route]:
    return [
        Route(prefix, target_page, methods=["GET"]),
        Route(f"{prefix}/models", models_set, methods=["POST"]),
        Route(f"{prefix}/models/delete", models_delete, methods=["POST"]),
        Route(f"{prefix}/tools", tools_set, methods=["POST"]),
        Route(f"{prefix}/ip-allowlist", ip_set, methods=["POST"]),
        Route(f"{prefix}/ip-allowlist/lift", ip_lift, methods=["POST"]),
    ]


ROUTES = [
    Route("/access", access_page, methods=["GET"]),
    Route("/access/ip-allowlist", org_ip_set, methods=["POST"]),
    Route("/access/ip-allowlist/lift", org_ip_lift, methods=["POST"]),
    *_routes("/projects/{pid}/access"),
    Route("/projects/{pid}/access/groups", project_group_add, methods=["POST"]),
    Route("/projects/{pid}/access/groups/{gid}/remove", project_group_remove, methods=["POST"]),
    *_routes("/projects/{pid}/keys/{kid}/access"),
]
