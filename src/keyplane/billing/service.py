"""Limits and billing as the admin API and the dashboard both use them: credit, spend limits, rate limits.

Each function is one admin call's work, given what the route parsed (ids from the path, the JSON body):
billing/routes.py answers the admin API with them and the dashboard's pages call them for the signed-in
user, after the same permission check (keyplane.web.features). Every change runs in one transaction
with its audit entry and a revision bump, then this instance reloads its billing configuration at once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from keyplane import control
from keyplane.billing import credit, ratelimits, spend
from keyplane.billing.engine import Billing
from keyplane.billing.models import CreditGrant
from keyplane.degrade import store_outage
from keyplane.runtime import Runtime


def billing_of(rt: Runtime) -> Billing:
    billing = rt.features.billing
    if billing is None:  # the admin endpoints are mounted by the billing feature's start
        raise RuntimeError("the billing feature is not running")
    return billing


async def scope_of(
    rt: Runtime, s: Any, project_id: str | None, key_id: str | None = None, write: bool = False
) -> tuple[str, str, str | None]:
    """(scope, scope id, project id): the organization (no project), a project, or a key of a project."""
    if project_id is None:
        return "organization", rt.snapshot.org_id, None
    p = await control.get_project(s, project_id)
    if write:
        control.ensure_active(p)
    if key_id is not None:
        k = await control.get_key(s, key_id, p.id, "project")
        return "api_key", k.id, p.id
    return "project", p.id, p.id


async def after_commit(b: Billing) -> list[str]:
    """Reload this instance's billing configuration after a committed change; when a store fails meanwhile,
    the change stands (the background task reloads it within a tick) and the answer says so."""
    try:
        await b.reload()
    except Exception as e:
        if store_outage(e) is None:
            raise
        return ["The change was saved; this instance applies it as soon as its store answers again."]
    return []


# --- credit --------------------------------------------------------------------------------------


async def add_credit_grant(rt: Runtime, actor: control.Actor, body: dict[str, Any]) -> dict[str, Any]:
    b = billing_of(rt)
    async with rt.write() as s:
        g = await credit.create_grant(s, actor, body, rt.clock.now(), b.tiers)
    await b.reload()
    return credit.grant_object(g)


async def credit_grants(
    rt: Runtime, *, after: str | None, before: str | None, limit: int, descending: bool = False
) -> tuple[list[dict[str, Any]], bool]:
    async with rt.read() as s:
        rows, more = await control.page(
            s, CreditGrant, select(CreditGrant), after=after, before=before, limit=limit, descending=descending
        )
    return [credit.grant_object(g) for g in rows], more


async def credit_balance(rt: Runtime) -> dict[str, Any]:
    b = billing_of(rt)
    granted = sum(g.amount_micros for g in b.cfg.grants) // 10_000
    used, reserved = await b.spent("credit", b.org_id) if b.credit_active else (0, 0)
    return credit.balance_object(granted, used, b.credit_cap, reserved, b.credit_enforced)


# --- spend limits --------------------------------------------------------------------------------


async def spend_limit(rt: Runtime, project_id: str | None = None, key_id: str | None = None) -> dict[str, Any]:
    """The hard spend limit of the organization, a project or a key, with this month's spend."""
    b = billing_of(rt)
    async with rt.read() as s:
        scope, sid, _ = await scope_of(rt, s, project_id, key_id)
        row = await spend.get_limit(s, scope, sid)
    spent, _r = await b.spent(scope, sid)
    return spend.limit_object(scope, row, spent, rt.clock.now())


async def set_spend_limit(
    rt: Runtime, actor: control.Actor, body: dict[str, Any], project_id: str | None = None, key_id: str | None = None
) -> dict[str, Any]:
    b = billing_of(rt)
    async with rt.write() as s:
        scope, sid, pid = await scope_of(rt, s, project_id, key_id, write=True)
        row = await spend.set_limit(s, actor, scope, sid, pid, body, rt.clock.now())
    # Committed: from here on the answer is a success, whatever a store does next (issue 15, finding 11).
    notes = await after_commit(b)
    try:
        spent, _r = await b.spent(scope, sid)
    except Exception as e:
        if store_outage(e) is None:
            raise
        obj = spend.limit_object(scope, row, 0, rt.clock.now())
        obj["spent"] = obj["spent_micros"] = None
        notes.append(
            "The spend limit was saved, but this month's spend could not be read (the limits store is "
            "unreachable): `spent` is null."
        )
        obj["keyplane_notices"] = notes
        return obj
    obj = spend.limit_object(scope, row, spent, rt.clock.now())
    if notes:
        obj["keyplane_notices"] = notes
    return obj


async def delete_spend_limit(
    rt: Runtime, actor: control.Actor, project_id: str | None = None, key_id: str | None = None
) -> dict[str, Any]:
    b = billing_of(rt)
    async with rt.write() as s:
        scope, sid, pid = await scope_of(rt, s, project_id, key_id)
        await spend.delete_limit(s, actor, scope, sid, pid, rt.clock.now())
    notes = await after_commit(b)
    return {**spend.limit_deleted(scope), **({"keyplane_notices": notes} if notes else {})}


# --- rate limits ---------------------------------------------------------------------------------


async def rate_limits(
    rt: Runtime,
    project_id: str,
    key_id: str | None = None,
    *,
    after: str | None = None,
    before: str | None = None,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], bool]:
    """The rate limits per model of a project (or a key's own), paged."""
    async with rt.read() as s:
        scope, sid, _ = await scope_of(rt, s, project_id, key_id)
    return ratelimits.page(billing_of(rt), scope, sid, after, before, limit)


async def set_rate_limit(
    rt: Runtime,
    actor: control.Actor,
    rate_limit_id: str,
    body: dict[str, Any],
    project_id: str,
    key_id: str | None = None,
) -> dict[str, Any]:
    b = billing_of(rt)
    model = ratelimits.model_of(rate_limit_id, ratelimits.catalog(b))
    changes = ratelimits.check_update(body)
    async with rt.write() as s:
        scope, sid, pid = await scope_of(rt, s, project_id, key_id, write=True)
        await ratelimits.update(s, actor, scope, sid, pid or "", model, changes, rt.clock.now())
    await b.reload()
    return ratelimits.rate_limit_object(scope, model, ratelimits.limits_of(b, scope, sid, model))


async def reset_rate_limit(
    rt: Runtime, actor: control.Actor, rate_limit_id: str, project_id: str, key_id: str | None = None
) -> dict[str, Any]:
    b = billing_of(rt)
    model = ratelimits.model_of(rate_limit_id, ratelimits.catalog(b))
    async with rt.write() as s:
        scope, sid, pid = await scope_of(rt, s, project_id, key_id)
        await ratelimits.reset(s, actor, scope, sid, pid or "", model, rt.clock.now())
    await b.reload()
    return ratelimits.rate_limit_object(scope, model, ratelimits.limits_of(b, scope, sid, model))
