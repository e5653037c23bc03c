"""The dashboard's view of the features that plug in (usage and costs, limits and billing, kill switch,
providers).

Each page reads and changes them through the service function the feature's admin API route calls
(keyplane.usage.queries and .records, keyplane.billing.service, keyplane.guard.service,
keyplane.providers.service), as the signed-in user (the audit log shows a ``session`` actor), after the
permission check that route makes: the user's effective permissions, with the project roles they hold in
a call on one project (keyplane.members.permissions). So a page shows exactly what the API shows. A
refusal is kept as the error body the API answers with; a feature that is not running answers like an
absent endpoint (``unknown_url``), and the page says the feature is not available instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keyplane import errors
from keyplane.billing import service as billing
from keyplane.degrade import store_outage
from keyplane.domain import DomainError, api_error
from keyplane.guard import service as guard
from keyplane.lists import list_response
from keyplane.members import permissions
from keyplane.providers import service as providers_service
from keyplane.scopes import ALL
from keyplane.usage import queries, records, rollups

if TYPE_CHECKING:
    from keyplane.web.base import Ctx

log = logging.getLogger("keyplane.web")

P = "/v1/organization"
MAX_PAGES = 20  # usage and costs: the pages of buckets followed at most


@dataclass(frozen=True)
class Result:
    status: int
    data: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def available(self) -> bool:
        """False when the feature is absent (its endpoint would not exist), not for a missing object."""
        if self.status in (404, 405) and isinstance(self.data, dict):
            code = (self.data.get("error") or {}).get("code")
            return code not in ("unknown_url", "method_not_allowed")
        return self.status != 0

    @property
    def error(self) -> str:
        if isinstance(self.data, dict) and isinstance(self.data.get("error"), dict):
            return str(self.data["error"].get("message") or "error")
        return f"HTTP {self.status}"

    def items(self) -> list[dict[str, Any]]:
        if isinstance(self.data, dict) and isinstance(self.data.get("data"), list):
            return [x for x in self.data["data"] if isinstance(x, dict)]
        if isinstance(self.data, list):
            return [x for x in self.data if isinstance(x, dict)]
        return []


UNAVAILABLE = Result(404, {"error": {"code": "unknown_url", "message": "not available"}})


def check_permitted(ctx: Ctx, method: str, api_path: str, project_id: str | None = None) -> None:
    """The admin API's permission check of the call ``method api_path`` for the signed-in user: what an
    unrestricted admin key of theirs would hold (keyplane.admin.common), an OpenAI-shaped 403 otherwise."""
    assert ctx.user is not None
    uid = ctx.user.id
    granted = permissions.of_key_in_project(ALL, uid, {uid: ctx.granted}, ctx.rt.snapshot.project_grants, project_id)
    permissions.check_granted(granted, method, api_path)


async def call(
    ctx: Ctx,
    method: str,
    api_path: str,
    fn: Callable[[], Awaitable[Any]],
    *,
    project_id: str | None = None,
    running: object = True,
) -> Result:
    """``fn()`` (a feature's service function) as the admin call ``method api_path`` would run it: the same
    permission check first, its refusals as the API's error body. ``running``: None when the feature is off."""
    if running is None:
        return UNAVAILABLE
    try:
        check_permitted(ctx, method, api_path, project_id)
        return Result(200, await fn())
    except DomainError as e:
        err = api_error(e)
    except errors.APIError as e:
        err = e
    except Exception as e:
        store = store_outage(e)
        if store is None:
            log.exception("dashboard call of %s %s failed", method, api_path)
        err = errors.store_unavailable(store) if store is not None else errors.internal_error()
    return Result(err.status, err.to_dict())


def _listed(got: tuple[list[dict[str, Any]], bool]) -> dict[str, Any]:
    return list_response(*got)


# --- usage and costs ---------------------------------------------------------------------------------


def _filters(project_ids: Any = None, api_key_ids: Any = None, models: Any = None) -> rollups.Filters:
    return rollups.Filters(
        project_ids=tuple(project_ids or ()), api_key_ids=tuple(api_key_ids or ()), models=tuple(models or ())
    )


async def _all_pages(page_of: Callable[[str | None], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Follow ``next_page`` up to :data:`MAX_PAGES`; the buckets are concatenated."""
    first = await page_of(None)
    data = list(first.get("data") or [])
    nxt, pages = first.get("next_page"), 1
    while first.get("has_more") and nxt and pages < MAX_PAGES:
        more = await page_of(nxt)
        data.extend(more.get("data") or [])
        nxt, pages = more.get("next_page"), pages + 1
        if not more.get("has_more"):
            break
    return {**first, "data": data, "has_more": False}


async def usage(
    ctx: Ctx, kind: str, *, start: int, end: int, bucket_width: str, limit: int, group_by: list[str], **filters: Any
) -> Result:
    """``GET /usage/{kind}``, every page of the range."""
    rt = ctx.rt

    async def fetch() -> dict[str, Any]:
        dims = queries.check_group_by(group_by, queries.GROUP_BY[kind])
        _, maximum = queries.check_width(bucket_width)

        async def page_of(page: str | None) -> dict[str, Any]:
            rng = queries.Range(rt, start, end, bucket_width, min(limit, maximum), page)
            return await queries.usage(rt, kind, rng, dims, _filters(**filters))

        return await _all_pages(page_of)

    return await call(ctx, "GET", f"{P}/usage/{kind}", fetch)


async def costs(ctx: Ctx, *, start: int, end: int, limit: int, group_by: list[str], **filters: Any) -> Result:
    """``GET /costs`` (daily buckets), every page of the range."""
    rt = ctx.rt

    async def fetch() -> dict[str, Any]:
        dims = queries.check_group_by(group_by, queries.COSTS_GROUP_BY)
        _, maximum = queries.check_width("1d", costs=True)

        async def page_of(page: str | None) -> dict[str, Any]:
            rng = queries.Range(rt, start, end, "1d", min(limit, maximum), page, costs=True)
            return await queries.costs(rt, rng, dims, _filters(**filters))

        return await _all_pages(page_of)

    return await call(ctx, "GET", f"{P}/costs", fetch)


async def usage_requests(ctx: Ctx, *, limit: int, start: int | None = None, **filters: Any) -> Result:
    """``GET /usage/requests``: the newest request records."""
    f = _filters(**filters)
    q = records.RequestQuery(
        start=start, limit=limit, project_ids=f.project_ids, api_key_ids=f.api_key_ids, models=f.models
    )

    async def fetch() -> dict[str, Any]:
        return _listed(await records.requests(ctx.rt, q))

    return await call(ctx, "GET", f"{P}/usage/requests", fetch)


# --- limits and billing --------------------------------------------------------------------------


def _limit_path(project_id: str | None) -> str:
    return f"{P}/projects/{project_id}/spend_limit" if project_id else f"{P}/spend_limit"


async def spend_limit(ctx: Ctx, project_id: str | None = None) -> Result:
    return await call(
        ctx,
        "GET",
        _limit_path(project_id),
        lambda: billing.spend_limit(ctx.rt, project_id),
        project_id=project_id,
        running=ctx.rt.features.billing,
    )


async def set_spend_limit(ctx: Ctx, body: dict[str, Any], project_id: str | None = None) -> Result:
    return await call(
        ctx,
        "POST",
        _limit_path(project_id),
        lambda: billing.set_spend_limit(ctx.rt, ctx.actor, body, project_id),
        project_id=project_id,
        running=ctx.rt.features.billing,
    )


async def delete_spend_limit(ctx: Ctx, project_id: str | None = None) -> Result:
    return await call(
        ctx,
        "DELETE",
        _limit_path(project_id),
        lambda: billing.delete_spend_limit(ctx.rt, ctx.actor, project_id),
        project_id=project_id,
        running=ctx.rt.features.billing,
    )


async def credit_balance(ctx: Ctx) -> Result:
    b = ctx.rt.features.billing
    return await call(ctx, "GET", f"{P}/credit_balance", lambda: billing.credit_balance(ctx.rt), running=b)


async def credit_grants(ctx: Ctx, limit: int = 100) -> Result:
    async def fetch() -> dict[str, Any]:
        return _listed(await billing.credit_grants(ctx.rt, after=None, before=None, limit=limit))

    return await call(ctx, "GET", f"{P}/credit_grants", fetch, running=ctx.rt.features.billing)


async def add_credit_grant(ctx: Ctx, body: dict[str, Any]) -> Result:
    return await call(
        ctx,
        "POST",
        f"{P}/credit_grants",
        lambda: billing.add_credit_grant(ctx.rt, ctx.actor, body),
        running=ctx.rt.features.billing,
    )


async def rate_limits(ctx: Ctx, project_id: str, limit: int = 100) -> Result:
    async def fetch() -> dict[str, Any]:
        return _listed(await billing.rate_limits(ctx.rt, project_id, limit=limit))

    path = f"{P}/projects/{project_id}/rate_limits"
    return await call(ctx, "GET", path, fetch, project_id=project_id, running=ctx.rt.features.billing)


async def set_rate_limit(ctx: Ctx, project_id: str, rate_limit_id: str, body: dict[str, Any]) -> Result:
    return await call(
        ctx,
        "POST",
        f"{P}/projects/{project_id}/rate_limits/{rate_limit_id}",
        lambda: billing.set_rate_limit(ctx.rt, ctx.actor, rate_limit_id, body, project_id),
        project_id=project_id,
        running=ctx.rt.features.billing,
    )


# --- kill switch ---------------------------------------------------------------------------------


async def guard_rules(ctx: Ctx, limit: int = 20) -> Result:
    async def fetch() -> dict[str, Any]:
        return _listed(await guard.rules(ctx.rt, limit=limit))

    return await call(ctx, "GET", f"{P}/guard/rules", fetch, running=ctx.rt.features.guard)


async def guard_events(ctx: Ctx, limit: int = 20) -> Result:
    async def fetch() -> dict[str, Any]:
        return _listed(await guard.events(ctx.rt, limit=limit))

    return await call(ctx, "GET", f"{P}/guard/events", fetch, running=ctx.rt.features.guard)


# --- providers -----------------------------------------------------------------------------------


async def providers(ctx: Ctx) -> Result:
    async def fetch() -> dict[str, Any]:
        return list_response(providers_service.providers(ctx.rt), False)

    return await call(ctx, "GET", f"{P}/providers", fetch)


async def provider_report(ctx: Ctx, name: str, unused_days: int) -> Result:
    from urllib.parse import quote

    path = f"{P}/providers/{quote(name, safe='')}/report"
    return await call(ctx, "GET", path, lambda: providers_service.provider_report(ctx.rt, name, unused_days))


async def provider_events(ctx: Ctx, limit: int = 20) -> Result:
    async def fetch() -> dict[str, Any]:
        return _listed(await providers_service.events(ctx.rt, limit=limit))

    return await call(ctx, "GET", f"{P}/providers/events", fetch)
