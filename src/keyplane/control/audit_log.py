"""Reading the audit log (writing it is keyplane.control.base.audit): the admin API's audit_logs.list and
the dashboard's Audit log page run the same query."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane.control.base import page
from keyplane.store.models import AuditLog

_COMPARE = ("gt", "gte", "lt", "lte")


async def list_audit_logs(
    s: AsyncSession,
    *,
    limit: int,
    after: str | None = None,
    before: str | None = None,
    effective_at: Mapping[str, int] | None = None,
    project_ids: Iterable[str] = (),
    event_types: Iterable[str] = (),
    type_like: str | None = None,
    actor_ids: Iterable[str] = (),
    resource_ids: Iterable[str] = (),
) -> tuple[list[AuditLog], bool]:
    """A page of entries, newest first: (entries, has_more). ``effective_at`` bounds the time by operator
    (``gt``, ``gte``, ``lt``, ``lte``); an empty filter is no filter; ``type_like`` is a SQL LIKE pattern."""
    stmt = select(AuditLog)
    at = AuditLog.effective_at
    for op in _COMPARE:
        t = (effective_at or {}).get(op)
        if t is not None:
            stmt = stmt.where({"gt": at > t, "gte": at >= t, "lt": at < t, "lte": at <= t}[op])
    if type_like is not None:
        stmt = stmt.where(AuditLog.type.like(type_like))
    for values, col in (
        (project_ids, AuditLog.project_id),
        (event_types, AuditLog.type),
        (actor_ids, AuditLog.actor_id),
        (resource_ids, AuditLog.resource_id),
    ):
        wanted = list(values)
        if wanted:
            stmt = stmt.where(col.in_(wanted))
    return await page(s, AuditLog, stmt, after=after, before=before, limit=limit, descending=True)


async def audit_event_types(s: AsyncSession) -> list[str]:
    """Every event type the log holds, sorted."""
    return sorted(t for (t,) in (await s.execute(select(AuditLog.type).distinct())).all())
