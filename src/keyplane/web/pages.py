"""Read pages: Overview, Usage (+ CSV), Credit, Kill switch, Audit log."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from keyplane import control
from keyplane.admin import shapes
from keyplane.web import data, features
from keyplane.web.base import Ctx, Refused, view
from keyplane.web.features import Result

# Every usage kind keyplane meters (usage/queries.py METERED): the pages total them all, as `keyplane usage`
# and /costs do, not the completions alone.
USAGE_KINDS = ("completions", "embeddings", "moderations", "images", "audio_speeches", "audio_transcriptions")


async def all_usage(
    ctx: Ctx, *, start: int, end: int, bucket_width: str, limit: int, group_by: list[str], **filters: Any
) -> Result:
    """The usage buckets of every kind, merged by bucket start; each result says its ``kind``. The answer's
    status is the completions one (the feature is there or not); another kind that fails is left out."""
    answers = await asyncio.gather(
        *(
            features.usage(
                ctx, k, start=start, end=end, bucket_width=bucket_width, limit=limit, group_by=group_by, **filters
            )
            for k in USAGE_KINDS
        )
    )
    first = answers[0]
    if not first.ok or not isinstance(first.data, dict):
        return first
    merged: dict[int, dict[str, Any]] = {}
    for kind, r in zip(USAGE_KINDS, answers, strict=True):
        if not r.ok:
            continue
        for bucket in r.items():
            m = merged.setdefault(int(bucket.get("start_time") or 0), {**bucket, "results": []})
            m["results"].extend({**x, "kind": kind} for x in bucket.get("results") or [] if isinstance(x, dict))
    return Result(first.status, {**first.data, "data": [merged[t] for t in sorted(merged)]})


async def _usage_and_costs(
    ctx: Ctx, start: int, end: int, width: str, count: int, **filters: Any
) -> tuple[Result, Result]:
    group_by = filters.pop("group_by", [])
    usage = await all_usage(ctx, start=start, end=end, bucket_width=width, limit=count, group_by=group_by, **filters)
    cost_filters = {k: v for k, v in filters.items() if k in ("project_ids", "api_key_ids", "models")}
    cost_group = [g for g in group_by if g in ("project_id", "api_key_id")]
    costs = await features.costs(
        ctx,
        start=start,
        end=end,
        limit=min(count, 31) if width == "1d" else 2,
        group_by=cost_group,
        **cost_filters,
    )
    return usage, costs


def _buckets(r: Result) -> list[dict[str, Any]]:
    return r.items() if r.ok else []


# --- overview ----------------------------------------------------------------------------------


@view()
async def overview(ctx: Ctx) -> Response:
    now = ctx.rt.clock.now()
    mstart = data.month_start(now)
    start, end, width, count = data.range_window(now, "30d")
    group = ["project_id", "api_key_id", "model"]
    usage, costs = await _usage_and_costs(ctx, start, end, width, count, group_by=group)
    month_usage = await all_usage(ctx, start=mstart, end=end, bucket_width="1d", limit=31, group_by=group)
    month_costs = await features.costs(ctx, start=mstart, end=end, limit=31, group_by=["project_id"])
    org_limit = await features.spend_limit(ctx)
    balance = await features.credit_balance(ctx)
    events = await features.guard_events(ctx, limit=5)
    chart = data.usage_view(_buckets(usage), _buckets(costs), start, width, count)
    month = data.usage_view(_buckets(month_usage), _buckets(month_costs), mstart, "1d", 31)
    async with ctx.rt.read() as s:
        pnames, knames = await data.names(s)
        n_projects = await control.count_projects(s, "active")
        n_keys = await control.count_active_keys(s)
    spend_by_project = data.grouped_costs(_buckets(month_costs), "project_id")
    return ctx.render(
        "overview.html",
        nav="overview",
        chart=chart,
        month=month,
        month_start=mstart,
        usage_available=usage.available,
        costs_available=month_costs.available and month_costs.ok,
        org_limit=org_limit.data if org_limit.ok else None,
        limit_available=org_limit.available,
        balance=data.balance_value(balance.data) if balance.ok else None,
        balance_available=balance.available,
        events=events.items()[:5] if events.ok else [],
        events_available=events.available,
        top_projects=data.grouped(_buckets(month_usage), "project_id")[:5],
        top_keys=data.grouped(_buckets(month_usage), "api_key_id")[:5],
        top_models=data.grouped(_buckets(month_usage), "model")[:5],
        spend_by_project=spend_by_project,
        pnames=pnames,
        knames=knames,
        n_projects=n_projects,
        n_keys=n_keys,
        cols=data.columns,
        cell=data.cell,
        label=data.label,
    )


# --- usage -------------------------------------------------------------------------------------


async def _usage_query(ctx: Ctx) -> dict[str, Any]:
    q = ctx.request.query_params
    f = {
        "project": q.get("project", "")[:64],
        "key": q.get("key", "")[:64],
        "model": q.get("model", "")[:128],
        "range": q.get("range", "30d") if q.get("range") in data.RANGES else "30d",
    }
    start, end, width, count = data.range_window(ctx.rt.clock.now(), f["range"])
    filters: dict[str, Any] = {"group_by": ["project_id", "api_key_id", "model"]}
    if f["project"]:
        filters["project_ids"] = [f["project"]]
    if f["key"]:
        filters["api_key_ids"] = [f["key"]]
    if f["model"]:
        filters["models"] = [f["model"]]
    usage, costs = await _usage_and_costs(ctx, start, end, width, count, **filters)
    view_ = data.usage_view(_buckets(usage), _buckets(costs), start, width, count)
    return {"f": f, "usage": usage, "costs": costs, "view": view_, "start": start, "end": end, "width": width}


@view()
async def usage_page(ctx: Ctx) -> Response:
    u = await _usage_query(ctx)
    async with ctx.rt.read() as s:
        pnames, knames = await data.names(s)
        projects = await control.all_projects(s)
        keys = await control.all_keys(s, project_id=u["f"]["project"] or None)
    models = sorted(
        {str(r.get("model")) for r in u["view"].rows if r.get("model")}
        | ({u["f"]["model"]} if u["f"]["model"] else set())
    )
    requests = await features.usage_requests(
        ctx,
        limit=20,
        start=u["start"],
        project_ids=[u["f"]["project"]] if u["f"]["project"] else None,
        api_key_ids=[u["f"]["key"]] if u["f"]["key"] else None,
        models=[u["f"]["model"]] if u["f"]["model"] else None,
    )
    return ctx.render(
        "usage.html",
        nav="usage",
        ranges=data.RANGES,
        projects=projects,
        keys=keys,
        models=models,
        pnames=pnames,
        knames=knames,
        usage_available=u["usage"].available,
        usage_error=None if u["usage"].ok or not u["usage"].available else u["usage"].error,
        costs_available=u["costs"].available and u["costs"].ok,
        requests=requests.items() if requests.ok else [],
        requests_available=requests.ok,
        cols=data.columns,
        cell=data.cell,
        label=data.label,
        **u,
    )


@view()
async def usage_csv(ctx: Ctx) -> Response:
    u = await _usage_query(ctx)
    async with ctx.rt.read() as s:
        pnames, knames = await data.names(s)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "bucket_start_utc",
            "project_id",
            "project",
            "api_key_id",
            "api_key",
            "model",
            "requests",
            "input_tokens",
            "output_tokens",
            "input_cached_tokens",
        ]
    )
    for r in u["view"].rows:
        t = datetime.fromtimestamp(int(r.get("start_time") or 0), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        pid, kid = r.get("project_id") or "", r.get("api_key_id") or ""
        w.writerow(
            [
                t,
                pid,
                _csv_safe(pnames.get(pid, "")),
                kid,
                _csv_safe(knames.get(kid, "")),
                _csv_safe(r.get("model") or ""),
                r.get("num_model_requests") or 0,
                r.get("input_tokens") or 0,
                r.get("output_tokens") or 0,
                r.get("input_cached_tokens") or 0,
            ]
        )
    name = f"keyplane-usage-{u['f']['range']}.csv"
    return Response(
        buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"},
    )


def _csv_safe(value: str) -> str:
    """Names are user input: keep a spreadsheet from reading one as a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


# --- credit ------------------------------------------------------------------------------------


@view()
async def credit_page(ctx: Ctx) -> Response:
    balance = await features.credit_balance(ctx)
    grants = await features.credit_grants(ctx, limit=100)
    org_limit = await features.spend_limit(ctx)
    return ctx.render(
        "credit.html",
        nav="credit",
        balance=data.balance_value(balance.data) if balance.ok else None,
        balance_raw=balance.data if balance.ok and isinstance(balance.data, dict) else {},
        balance_available=balance.available,
        grants=grants.items(),
        grants_available=grants.available,
        grants_error=None if grants.ok or not grants.available else grants.error,
        org_limit=org_limit.data if org_limit.ok else None,
        limit_available=org_limit.available,
        cols=data.columns,
        cell=data.cell,
        label=data.label,
    )


# --- kill switch -------------------------------------------------------------------------------


@view()
async def guard_page(ctx: Ctx) -> Response:
    rules = await features.guard_rules(ctx)
    events = await features.guard_events(ctx, limit=50)
    async with ctx.rt.read() as s:
        pnames, knames = await data.names(s)
        knames_short = {kid: name for kid, (name, _) in (await control.key_names(s)).items()}

    def rule_columns(items: list[dict[str, Any]]) -> list[str]:
        return data.columns(
            items, ("object", "id") if all(r.get("id") == r.get("name") for r in items) else ("object",)
        )

    return ctx.render(
        "guard.html",
        nav="guard",
        rules=rules.items(),
        rules_available=rules.available,
        rule_cols=rule_columns,
        rules_error=None if rules.ok or not rules.available else rules.error,
        events=events.items(),
        events_available=events.available,
        knames=knames,
        knames_short=knames_short,
        pnames=pnames,
        cols=data.columns,
        cell=data.cell,
        label=data.label,
    )


# --- audit log ---------------------------------------------------------------------------------

AUDIT_PAGE = 50


@view()
async def audit_page(ctx: Ctx) -> Response:
    q = ctx.request.query_params
    f = {
        "type": q.get("type", "")[:64],
        "project": q.get("project", "")[:64],
        "actor": q.get("actor", "")[:64],
        "resource": q.get("resource", "")[:64],
    }
    wildcard = "*" in f["type"]
    async with ctx.rt.read() as s:
        try:
            rows, more = await control.list_audit_logs(
                s,
                after=q.get("after") or None,
                limit=AUDIT_PAGE,
                type_like=f["type"].replace("*", "%") if wildcard else None,
                event_types=[f["type"]] if f["type"] and not wildcard else [],
                project_ids=[f["project"]] if f["project"] else [],
                actor_ids=[f["actor"]] if f["actor"] else [],
                resource_ids=[f["resource"]] if f["resource"] else [],
            )
        except Refused:
            rows, more = [], False
        pnames, _ = await data.names(s)
        projects = await control.all_projects(s)
        users = {u.id: u.email for u in await control.all_users(s)}
        types = await control.audit_event_types(s)
    entries = []
    for r in rows:
        d = shapes.audit_log(r, pnames.get(r.project_id or ""))
        entries.append(
            {
                "row": r,
                "actor": d["actor"],
                "details": data.detail_lines(d[r.type]),
                "actor_label": _actor_label(d["actor"], users),
            }
        )
    nxt = rows[-1].id if more and rows else None
    return ctx.render(
        "audit.html", nav="audit", entries=entries, f=f, types=types, projects=projects, pnames=pnames, next_after=nxt
    )


def _actor_label(actor: dict[str, Any], users: dict[str, str]) -> str:
    kind = actor.get("type")
    detail = actor.get(kind) if isinstance(kind, str) else None
    if kind == "session" and isinstance(detail, dict):
        user = detail.get("user") or {}
        email = user.get("email") or users.get(user.get("id") or "", "") or "unknown user"
        ip = detail.get("ip_address")
        return f"{email} (dashboard{', ' + ip if ip else ''})"
    if kind == "api_key" and isinstance(detail, dict):
        return f"admin key {detail.get('id')}"
    if kind == "cli":
        return "command line"
    return str(kind or "-")


ROUTES = [
    Route("/", overview, methods=["GET"]),
    Route("/usage", usage_page, methods=["GET"]),
    Route("/usage.csv", usage_csv, methods=["GET"]),
    Route("/credit", credit_page, methods=["GET"]),
    Route("/kill-switch", guard_page, methods=["GET"]),
    Route("/audit", audit_page, methods=["GET"]),
]
