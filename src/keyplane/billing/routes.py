"""Admin API endpoints of limits and billing (OpenAI Admin API shapes, plus keyplane extensions).

Every change runs in one transaction with its audit entry and a revision bump, then this instance
reloads its billing configuration at once (the others within a poll interval).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from keyplane import errors
from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, runtime
from keyplane.admin.params import query_choice, query_limit
from keyplane.billing import service, spend_alerts, tiers
from keyplane.billing.engine import Billing
from keyplane.billing.price import MICROS
from keyplane.lists import list_response

P = "/v1/organization"


def _b(request: Request) -> Billing:
    return service.billing_of(runtime(request))


def _now(request: Request) -> float:
    return runtime(request).clock.now()


async def _scope(request: Request, s: Any, write: bool = False) -> tuple[str, str, str | None]:
    """(scope, scope id, project id) of a path: the organization, a project, or a key of a project."""
    pp = request.path_params
    return await service.scope_of(runtime(request), s, pp.get("project_id"), pp.get("key_id"), write)


def _where(request: Request) -> dict[str, str | None]:
    """The project and key ids of a path (none: the organization), as the service functions take them."""
    pp = request.path_params
    return {"project_id": pp.get("project_id"), "key_id": pp.get("key_id")}


# --- credit --------------------------------------------------------------------------------------


async def create_credit_grant(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    return JSONResponse(await service.add_credit_grant(runtime(request), actor, body))


async def list_credit_grants(request: Request) -> JSONResponse:
    authenticate_admin(request)
    q = request.query_params
    limit = query_limit(request, 20, 100)
    descending = query_choice(request, "order", ("asc", "desc"), "asc") == "desc"
    items, more = await service.credit_grants(
        runtime(request), after=q.get("after"), before=q.get("before"), limit=limit, descending=descending
    )
    return JSONResponse(list_response(items, more))


async def credit_balance(request: Request) -> JSONResponse:
    authenticate_admin(request)
    return JSONResponse(await service.credit_balance(runtime(request)))


async def usage_tier(request: Request) -> JSONResponse:
    """keyplane extension: the organization's usage tier (reading it re-evaluates promotion)."""
    authenticate_admin(request)
    b = _b(request)
    await b.promote()
    now = _now(request)
    async with runtime(request).read() as s:
        st = await tiers.standing(s)
        name = await tiers.current_tier(s, b.tiers)
        since = await tiers.tier_since(s)
    obj = tiers.tier_object(b.tiers, name, st, now, since)
    obj["tiers"] = [
        {"name": t.name, "min_paid": round(t.min_paid * 100), "min_days": t.min_days} for t in b.tiers.tiers
    ]
    return JSONResponse(obj)


def _audio_rates(p: Any) -> dict[str, float]:
    """The audio rates of a realtime model's entry (USD per 1M tokens); none for the others."""
    if p.audio_input is None:
        return {}
    out = p.output if p.audio_output is None else p.audio_output
    return {
        "audio_input": p.audio_input / MICROS,
        "cached_audio_input": p.cached_audio_input / MICROS,
        "audio_output": out / MICROS,
    }


async def list_prices(request: Request) -> JSONResponse:
    """keyplane extension: the price table in use (USD per 1M tokens)."""
    authenticate_admin(request)
    b = _b(request)
    items = [
        {
            "object": "keyplane.price",
            "id": name,
            "model": name,
            "input": p.input / MICROS,
            "cached_input": p.cached_input / MICROS,
            "output": p.output / MICROS,
            **_audio_rates(p),
            **({"image_input": p.image_input / MICROS} if p.image_input is not None else {}),
        }
        for name, p in sorted(b.prices.entries.items())
    ]
    return JSONResponse(list_response(items, False))


# --- spend limits --------------------------------------------------------------------------------


async def get_spend_limit(request: Request) -> JSONResponse:
    authenticate_admin(request)
    return JSONResponse(await service.spend_limit(runtime(request), **_where(request)))


async def set_spend_limit(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    return JSONResponse(await service.set_spend_limit(runtime(request), actor, body, **_where(request)))


async def delete_spend_limit(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    return JSONResponse(await service.delete_spend_limit(runtime(request), actor, **_where(request)))


# --- spend alerts --------------------------------------------------------------------------------


async def list_spend_alerts(request: Request) -> JSONResponse:
    authenticate_admin(request)
    q = request.query_params
    limit = query_limit(request, 20, 100)
    order = q.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise errors.bad_request("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    async with runtime(request).read() as s:
        scope, sid, _ = await _scope(request, s)
        rows, more = await spend_alerts.page_alerts(
            s, scope, sid, after=q.get("after"), before=q.get("before"), limit=limit, descending=order == "desc"
        )
    return JSONResponse(list_response([spend_alerts.alert_object(scope, a) for a in rows], more))


async def create_spend_alert(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        scope, sid, _ = await _scope(request, s, write=True)
        a = await spend_alerts.create_alert(s, actor, scope, sid, body, _now(request))
    await _b(request).reload()
    return JSONResponse(spend_alerts.alert_object(scope, a))


async def get_spend_alert(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        scope, sid, _ = await _scope(request, s)
        a = await spend_alerts.get_alert(s, scope, sid, request.path_params["alert_id"])
    return JSONResponse(spend_alerts.alert_object(scope, a))


async def update_spend_alert(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        scope, sid, _ = await _scope(request, s, write=True)
        a = await spend_alerts.update_alert(s, actor, scope, sid, request.path_params["alert_id"], body, _now(request))
    await _b(request).reload()
    return JSONResponse(spend_alerts.alert_object(scope, a))


async def delete_spend_alert(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    aid = request.path_params["alert_id"]
    async with runtime(request).write() as s:
        scope, sid, _ = await _scope(request, s)
        await spend_alerts.delete_alert(s, actor, scope, sid, aid, _now(request))
    await _b(request).reload()
    return JSONResponse(spend_alerts.alert_deleted(scope, aid))


# --- rate limits ---------------------------------------------------------------------------------


async def list_rate_limits(request: Request) -> JSONResponse:
    authenticate_admin(request)
    q = request.query_params
    limit = query_limit(request, 100, 1000)
    pp = request.path_params
    items, more = await service.rate_limits(
        runtime(request), pp["project_id"], pp.get("key_id"), after=q.get("after"), before=q.get("before"), limit=limit
    )
    return JSONResponse(list_response(items, more))


async def update_rate_limit(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    pp = request.path_params
    rid = pp["rate_limit_id"]
    return JSONResponse(
        await service.set_rate_limit(runtime(request), actor, rid, body, pp["project_id"], pp.get("key_id"))
    )


async def delete_rate_limit(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    pp = request.path_params
    rid = pp["rate_limit_id"]
    return JSONResponse(
        await service.reset_rate_limit(runtime(request), actor, rid, pp["project_id"], pp.get("key_id"))
    )


_PRJ = f"{P}/projects/{{project_id}}"
_KEY = f"{_PRJ}/api_keys/{{key_id}}"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(f"{P}/credit_grants", "GET", list_credit_grants, "List credit grants", True),
    Endpoint(f"{P}/credit_grants", "POST", create_credit_grant, "Add prepaid credit (integer cents)", True),
    Endpoint(f"{P}/credit_balance", "GET", credit_balance, "Credit granted, used and available (cents)", True),
    Endpoint(f"{P}/usage_tier", "GET", usage_tier, "The organization's usage tier (re-evaluated)", True),
    Endpoint(f"{P}/prices", "GET", list_prices, "The price table in use (USD per 1M tokens)", True),
    Endpoint(f"{P}/spend_limit", "GET", get_spend_limit, "Get the organization's hard spend limit"),
    Endpoint(f"{P}/spend_limit", "POST", set_spend_limit, "Create or replace the organization's hard spend limit"),
    Endpoint(f"{P}/spend_limit", "DELETE", delete_spend_limit, "Delete the organization's hard spend limit"),
    Endpoint(f"{_PRJ}/spend_limit", "GET", get_spend_limit, "Get a project's hard spend limit"),
    Endpoint(f"{_PRJ}/spend_limit", "POST", set_spend_limit, "Create or replace a project's hard spend limit"),
    Endpoint(f"{_PRJ}/spend_limit", "DELETE", delete_spend_limit, "Delete a project's hard spend limit"),
    Endpoint(f"{_KEY}/spend_limit", "GET", get_spend_limit, "Get a key's hard spend limit", True),
    Endpoint(f"{_KEY}/spend_limit", "POST", set_spend_limit, "Create or replace a key's hard spend limit", True),
    Endpoint(f"{_KEY}/spend_limit", "DELETE", delete_spend_limit, "Delete a key's hard spend limit", True),
    Endpoint(f"{P}/spend_alerts", "GET", list_spend_alerts, "List organization spend alerts"),
    Endpoint(f"{P}/spend_alerts", "POST", create_spend_alert, "Create an organization spend alert"),
    Endpoint(f"{P}/spend_alerts/{{alert_id}}", "GET", get_spend_alert, "Retrieve an organization spend alert"),
    Endpoint(f"{P}/spend_alerts/{{alert_id}}", "POST", update_spend_alert, "Update an organization spend alert"),
    Endpoint(f"{P}/spend_alerts/{{alert_id}}", "DELETE", delete_spend_alert, "Delete an organization spend alert"),
    Endpoint(f"{_PRJ}/spend_alerts", "GET", list_spend_alerts, "List project spend alerts"),
    Endpoint(f"{_PRJ}/spend_alerts", "POST", create_spend_alert, "Create a project spend alert"),
    Endpoint(f"{_PRJ}/spend_alerts/{{alert_id}}", "GET", get_spend_alert, "Retrieve a project spend alert"),
    Endpoint(f"{_PRJ}/spend_alerts/{{alert_id}}", "POST", update_spend_alert, "Update a project spend alert"),
    Endpoint(f"{_PRJ}/spend_alerts/{{alert_id}}", "DELETE", delete_spend_alert, "Delete a project spend alert"),
    Endpoint(f"{_PRJ}/rate_limits", "GET", list_rate_limits, "List a project's rate limits per model"),
    Endpoint(f"{_PRJ}/rate_limits/{{rate_limit_id}}", "POST", update_rate_limit, "Modify a project rate limit"),
    Endpoint(
        f"{_PRJ}/rate_limits/{{rate_limit_id}}",
        "DELETE",
        delete_rate_limit,
        "Reset a project rate limit to its tier's defaults",
        True,
    ),
    Endpoint(f"{_KEY}/rate_limits", "GET", list_rate_limits, "List a key's own rate limits per model", True),
    Endpoint(f"{_KEY}/rate_limits/{{rate_limit_id}}", "POST", update_rate_limit, "Modify a key's rate limit", True),
    Endpoint(
        f"{_KEY}/rate_limits/{{rate_limit_id}}", "DELETE", delete_rate_limit, "Remove a key's own rate limit", True
    ),
)
