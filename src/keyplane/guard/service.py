"""The kill switch's rules and events as the admin API (guard/routes.py) and the dashboard both read them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control
from keyplane.domain import Invalid
from keyplane.guard import store
from keyplane.guard.models import GuardEvent
from keyplane.guard.rules import Rule, effective
from keyplane.runtime import Runtime

if TYPE_CHECKING:
    from keyplane.guard.engine import Guard


def guard_of(rt: Runtime) -> Guard:
    guard = rt.features.guard
    if guard is None:  # the admin endpoints are mounted by the guard feature's start
        raise RuntimeError("the guard feature is not running")
    return guard


def event_json(e: GuardEvent) -> dict[str, Any]:
    return {
        "object": "guard.event",
        "id": e.id,
        "created_at": e.created_at,
        "rule": e.rule,
        "kind": e.kind,
        "scope": e.scope,
        "key_id": e.key_id,
        "project_id": e.project_id,
        "mode": e.mode,
        "action": e.action,
        "dry_run": e.dry_run,
        "figures": orjson.loads(e.figures),
        "message": e.message,
        "resolved_at": e.resolved_at,
    }


async def effective_rules(rt: Runtime) -> tuple[dict[str, Rule], dict[str, int]]:
    """The rules in force (configured, then changed over the API) and when each was last changed."""
    async with rt.read() as s:
        stored, times = await store.load_stored(s)
    return effective(guard_of(rt).base_rules, stored), times


async def rules(rt: Runtime, *, after: str | None = None, limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
    """The effective rules in order, paged by name: (rules, has_more)."""
    found, times = await effective_rules(rt)
    names = list(found)
    if after:
        if after not in found:
            raise Invalid(f"No guard rule named '{after}' to page from.", param="after")
        names = names[names.index(after) + 1 :]
    return [found[n].to_json(times.get(n)) for n in names[:limit]], len(names) > limit


async def events(
    rt: Runtime,
    *,
    after: str | None = None,
    limit: int = 20,
    key_id: str | None = None,
    rule: str | None = None,
    project_id: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """What the rules did, newest first: (events, has_more)."""
    async with rt.read() as s:
        return await events_in(s, after=after, limit=limit, key_id=key_id, rule=rule, project_id=project_id)


async def events_in(
    s: AsyncSession,
    *,
    after: str | None = None,
    limit: int = 20,
    key_id: str | None = None,
    rule: str | None = None,
    project_id: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """:func:`events` in the caller's session (`keyplane guard events` opens its own store)."""
    stmt = select(GuardEvent)
    for value, col in ((key_id, GuardEvent.key_id), (rule, GuardEvent.rule), (project_id, GuardEvent.project_id)):
        if value:
            stmt = stmt.where(col == value)
    rows, more = await control.page(s, GuardEvent, stmt, after=after, limit=limit, descending=True)
    return [event_json(e) for e in rows], more
