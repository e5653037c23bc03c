"""Individual request records (``GET /v1/organization/usage/requests``, a keyplane extension), for forensics:
the query shared by the admin API (usage/api.py) and the dashboard's Usage page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select

from keyplane.domain import Invalid
from keyplane.runtime import Runtime
from keyplane.usage.models import UsageRequest


@dataclass(frozen=True)
class RequestQuery:
    """What ``GET /v1/organization/usage/requests`` selects; ``status``: SQL clauses (api.py parses them)."""

    start: int | None = None
    end: int | None = None
    limit: int = 100
    after: str | None = None
    project_ids: tuple[str, ...] = ()
    api_key_ids: tuple[str, ...] = ()
    user_ids: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ()
    status: Any = None


def check_times(start: int | None, end: int | None) -> None:
    if start is not None and end is not None and end <= start:
        raise Invalid("Invalid 'end_time': it must be after 'start_time'.", param="end_time", code="invalid_value")


async def requests(rt: Runtime, q: RequestQuery) -> tuple[list[dict[str, Any]], bool]:
    """Individual request records, newest first: (records, has_more)."""
    r = UsageRequest
    check_times(q.start, q.end)
    conds: list[Any] = []
    if q.start is not None:
        conds.append(r.created_at >= q.start)
    if q.end is not None:
        conds.append(r.created_at < q.end)
    for values, col in (
        (q.project_ids, r.project_id),
        (q.api_key_ids, r.api_key_id),
        (q.user_ids, r.user_id),
        (q.models, r.model),
        (q.kinds, r.kind),
        (q.upstreams, r.upstream),
    ):
        if values:
            conds.append(col.in_(values))
    if q.status is not None:
        conds.append(q.status)
    async with rt.read() as s:
        if q.after:
            row = (await s.execute(select(r.created_at, r.seq).where(r.id == q.after))).first()
            if row is None:
                raise Invalid(
                    f"No request record with id '{q.after[:64]}' to page from.", param="after", code="invalid_value"
                )
            conds.append(or_(r.created_at < row.created_at, and_(r.created_at == row.created_at, r.seq < row.seq)))
        stmt = select(r).where(*conds).order_by(r.created_at.desc(), r.seq.desc()).limit(q.limit + 1)
        rows = list((await s.execute(stmt)).scalars())
    return [request_object(x) for x in rows[: q.limit]], len(rows) > q.limit


def request_object(r: Any) -> dict[str, Any]:
    return {
        "object": "organization.usage.request",
        "id": r.id,
        "created_at": r.created_at,
        "project_id": r.project_id,
        "api_key_id": r.api_key_id,
        "user_id": r.user_id,
        "model": r.model,
        "upstream": r.upstream,
        "endpoint": r.endpoint,
        "kind": r.kind,
        "status": r.status,
        "input_tokens": r.input_tokens,
        "input_cached_tokens": r.cached_tokens,
        "output_tokens": r.output_tokens,
        "cost": {"value": r.cost_micros / 1e6, "currency": "usd"},
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "stream": r.stream,
        "disconnected": r.disconnected,
        "usage_estimated": r.estimated,
        "attempts": r.attempts,
        "error": r.error,
        "upstream_request_id": r.upstream_request_id,
        "service_tier": r.service_tier,
    }
