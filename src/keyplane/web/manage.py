"""Pages that change things: Projects (spend limit, rate limits), Credit (keys: web/keys.py). Owners only
for changes.

Every change goes through keyplane.control (or a feature's service, keyplane.web.features) with the signed-in user
as a ``session`` actor, so it is in the audit log like any API change. A key value appears once, in
the dialog answering its creation or rotation, and nowhere else.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from keyplane import control
from keyplane.members import ops as members
from keyplane.scopes import AREAS
from keyplane.store.models import ApiKey, ServiceAccount, User
from keyplane.web import data, features
from keyplane.web.base import Ctx, Refused, error_page, view

EXPIRY = {"never": None, "30d": 30 * 86400, "90d": 90 * 86400, "365d": 365 * 86400}
MODEL_LIMIT_FIELDS = ("max_requests_per_1_minute", "max_tokens_per_1_minute", "max_requests_per_1_day")


def _problem(ctx: Ctx, message: str, status: int = 400) -> Response:
    return error_page(ctx, status, "Not done", message)


# --- projects ----------------------------------------------------------------------------------


@view()
async def projects_page(ctx: Ctx) -> Response:
    show_archived = ctx.request.query_params.get("archived") == "1"
    async with ctx.rt.read() as s:
        projects = await control.all_projects(s, include_archived=show_archived)
        reach = await members.reachable_project_ids(s, ctx.user) if ctx.user is not None else None
        if reach is not None:  # not an organization owner: only the projects they are a member of
            projects = [p for p in projects if p.id in reach]
        counts = await control.active_key_counts(s)
        n_archived = await control.count_projects(s, "archived")
    now = ctx.rt.clock.now()
    costs = await features.costs(
        ctx, start=data.month_start(now), end=int(now) + 86400, limit=31, group_by=["project_id"]
    )
    spend = data.grouped_costs(costs.items(), "project_id") if costs.ok else None
    return ctx.render(
        "projects.html",
        nav="projects",
        projects=projects,
        counts=counts,
        spend=spend,
        show_archived=show_archived,
        n_archived=n_archived or 0,
    )


@view(owner=True)
async def project_create(ctx: Ctx) -> Response:
    try:
        async with ctx.rt.write() as s:
            p = await control.create_project(s, ctx.actor, ctx.field("name"))
    except Refused as e:
        return _problem(ctx, e.message)
    return ctx.redirect(f"/projects/{p.id}", f"Project “{p.name}” created. Next: create a key for it.")


async def _project_page(ctx: Ctx, pid: str, *, secret: dict[str, Any] | None = None, status: int = 200) -> Response:
    async with ctx.rt.read() as s:
        try:
            p = await control.get_project(s, pid)
            await members.ensure_reachable(s, ctx.user, pid)
        except Refused:
            return error_page(ctx, 404, "Not found", f"There is no project with id {pid}.")
        show_revoked = ctx.request.query_params.get("revoked") == "1"
        keys = await control.all_project_keys(s, pid, include_revoked=show_revoked)
        users, sas = await control.key_owners(s, keys)
    now = ctx.rt.clock.now()
    limit = await features.spend_limit(ctx, pid)
    rates = await features.rate_limits(ctx, pid, limit=100)
    rows = [
        {
            "k": k,
            "status": _status(k, now),
            "perms": data.summary(data.permissions_from(k.permissions)),
            "owner": _owner(k, users, sas),
            # within the first key.expiring notice (7 days; keyplane.access.expiry): marked in the list
            "expiring": k.expires_at is not None and now < k.expires_at <= now + 7 * 86400,
        }
        for k in keys
    ]
    return ctx.render(
        "project.html",
        status=status,
        nav="projects",
        p=p,
        keys=rows,
        show_revoked=show_revoked,
        spend_limit=limit.data if limit.ok else None,
        limit_available=limit.available,
        rates=rates.items(),
        rates_available=rates.available,
        rate_fields=MODEL_LIMIT_FIELDS,
        rate_marks=data.rate_marks(ctx.rt.features.billing, pid, rates.items()),
        areas=AREAS,
        levels={a: "none" for a in AREAS},
        mode="all",
        secret=secret,
        expiry=EXPIRY,
        label=data.label,
    )


def _status(k: ApiKey, now: float) -> str:
    from keyplane.admin.shapes import key_status

    return key_status(k, now)


def _owner(k: ApiKey, users: dict[str, User], sas: dict[str, ServiceAccount]) -> str:
    if k.service_account_id:
        sa = sas.get(k.service_account_id)
        return f"service account {sa.name if sa else k.service_account_id}"
    u = users.get(k.owner_user_id or "")
    return u.email if u else "(removed user)"


@view()
async def project_page(ctx: Ctx) -> Response:
    return await _project_page(ctx, ctx.request.path_params["pid"])


@view(owner=True)
async def project_archive(ctx: Ctx) -> Response:
    pid = ctx.request.path_params["pid"]
    try:
        async with ctx.rt.write() as s:
            p = await control.archive_project(s, ctx.actor, pid)
    except Refused as e:
        return _problem(ctx, e.message)
    return ctx.redirect("/projects", f"Project “{p.name}” archived: its keys no longer work.")


def _dollars_to_cents(raw: str) -> int:
    raw = raw.replace("$", "").replace(",", "").strip()
    try:
        dollars = float(raw)
    except ValueError:
        raise ValueError("Enter an amount in USD, e.g. 250 or 99.50.") from None
    if not 0 <= dollars <= 1e9:
        raise ValueError("The amount must be between $0 and $1,000,000,000.")
    return round(dollars * 100)


async def _set_spend_limit(ctx: Ctx, pid: str | None, back: str) -> Response:
    raw = ctx.field("amount")
    if raw == "":
        r = await features.delete_spend_limit(ctx, pid)
        if r.status == 404 and r.available:
            return ctx.redirect(back, "There was no spend limit to remove.")
    else:
        try:
            cents_ = _dollars_to_cents(raw)
        except ValueError as e:
            return _problem(ctx, str(e))
        enforce = "enforcing" if ctx.field("enforce") == "on" else "inactive"
        body = {"threshold_amount": cents_, "currency": "USD", "interval": "month", "enforcement": {"status": enforce}}
        r = await features.set_spend_limit(ctx, body, pid)
    if not r.available:
        return _problem(ctx, "Spend limits are not available in this build of keyplane.", 501)
    if not r.ok:
        return _problem(ctx, r.error, r.status)
    return ctx.redirect(back, "Spend limit saved." if raw else "Spend limit removed.")


@view(owner=True)
async def spend_limit_set(ctx: Ctx) -> Response:
    pid = ctx.request.path_params["pid"]
    return await _set_spend_limit(ctx, pid, f"/projects/{pid}#spend-limit")


@view(owner=True)
async def org_spend_limit_set(ctx: Ctx) -> Response:
    return await _set_spend_limit(ctx, None, "/credit")


@view(owner=True)
async def credit_grant_add(ctx: Ctx) -> Response:
    try:
        amount = _dollars_to_cents(ctx.field("amount"))
    except ValueError as e:
        return _problem(ctx, str(e))
    body: dict[str, Any] = {"amount": amount}
    days = ctx.field("expires_days")
    if days:
        if not days.isdigit() or not 0 < int(days) <= 3650:
            return _problem(ctx, "Expiry must be a number of days from 1 to 3650, or empty.")
        body["expires_at"] = int(ctx.rt.clock.now()) + int(days) * 86400
    if ctx.field("note"):
        body["note"] = ctx.field("note")[:1000]
    r = await features.add_credit_grant(ctx, body)
    if not r.available:
        return _problem(ctx, "Prepaid credit is not available in this build of keyplane.", 501)
    if not r.ok:
        return _problem(ctx, r.error, r.status)
    return ctx.redirect("/credit", "Credit added.")


@view(owner=True)
async def rate_limit_set(ctx: Ctx) -> Response:
    pid, rid = ctx.request.path_params["pid"], ctx.request.path_params["rid"]
    body: dict[str, Any] = {}
    for name in MODEL_LIMIT_FIELDS:
        raw = ctx.field(name).replace(",", "")
        if raw == "":
            continue
        if not raw.isdigit() or len(raw) > 12:
            return _problem(ctx, f"{data.label(name)} must be a whole number.")
        body[name] = int(raw)
    if not body:
        return _problem(ctx, "Enter at least one limit.")
    r = await features.set_rate_limit(ctx, pid, rid, body)
    if not r.available:
        return _problem(ctx, "Rate limits are not available in this build of keyplane.", 501)
    if not r.ok:
        return _problem(ctx, r.error, r.status)
    return ctx.redirect(f"/projects/{pid}#rate-limits", "Rate limit saved.")


ROUTES = [
    Route("/projects", projects_page, methods=["GET"]),
    Route("/projects", project_create, methods=["POST"]),
    Route("/projects/{pid}", project_page, methods=["GET"]),
    Route("/projects/{pid}/archive", project_archive, methods=["POST"]),
    Route("/projects/{pid}/spend-limit", spend_limit_set, methods=["POST"]),
    Route("/projects/{pid}/rate-limits/{rid}", rate_limit_set, methods=["POST"]),
    Route("/credit/spend-limit", org_spend_limit_set, methods=["POST"]),
    Route("/credit/grants", credit_grant_add, methods=["POST"]),
]
