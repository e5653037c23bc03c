"""Rollups: records -> per-minute/hour/day sums, the exact range queries over them, and retention.

A query over [start, end) is cut into pieces, each answered by the coarsest table whose buckets fit
inside it: whole days from ``usage_day``, whole hours from ``usage_hour``, whole minutes from
``usage_minute`` and the ragged seconds at both ends from ``usage_requests``. So a query is exact
at any start/end second while reading few rows. Minutes older than their retention are answered
from the per-request rows instead (kept longer by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyplane.usage.journal import Record
from keyplane.usage.models import DIMS, ROLLUPS, SUMS, UsageDay, UsageHour, UsageMinute, UsageRequest

DAY = 86400
GROUPABLE = DIMS  # project_id, api_key_id, user_id, model, kind, service_tier
_INT_SUMS = tuple(s for s in SUMS if s != "latency_ms_sum")


@dataclass(frozen=True)
class Filters:
    project_ids: tuple[str, ...] = ()
    api_key_ids: tuple[str, ...] = ()
    user_ids: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    def clauses(self, table: Any) -> list[Any]:
        out = []
        for col, values in (
            ("project_id", self.project_ids),
            ("api_key_id", self.api_key_ids),
            ("user_id", self.user_ids),
            ("model", self.models),
            ("kind", self.kinds),
        ):
            if values:
                out.append(getattr(table, col).in_(values))
        return out


def new_sums() -> dict[str, float]:
    return dict.fromkeys(SUMS, 0)


# --- records -> rollup rows ----------------------------------------------------------------------


def rollup_rows(records: Iterable[Record], granularity: int) -> list[dict[str, Any]]:
    """Sum records into rollup rows of one granularity, sorted by key (upserts in a stable order)."""
    acc: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        t = int(r.t)
        key = (
            t - t % granularity,
            r.project_id or "",
            r.key_id or "",
            r.user_id or "",
            r.model or "",
            r.kind,
            r.service_tier or "default",
        )
        row: dict[str, Any] | None = acc.get(key)
        if row is None:
            row = acc[key] = {**dict(zip(("bucket", *DIMS), key, strict=True)), **new_sums()}
        row["requests"] += 1
        row["model_requests"] += 1 if r.model_request else 0
        row["errors"] += 1 if r.status >= 400 else 0
        row["input_tokens"] += r.input_tokens
        row["cached_tokens"] += r.cached_tokens
        row["output_tokens"] += r.output_tokens
        row["cost_micros"] += r.cost_micros
        row["cost_input_micros"] += r.cost_input_micros
        row["units"] += r.units
        row["input_audio_tokens"] += r.input_audio_tokens
        row["output_audio_tokens"] += r.output_audio_tokens
        row["latency_ms_sum"] += r.latency_ms
    return [acc[k] for k in sorted(acc)]


def coarser(rows: Iterable[dict[str, Any]], granularity: int) -> list[dict[str, Any]]:
    """Rollup rows of a finer granularity summed into ``granularity`` (a multiple of theirs): the hour
    and day rows come from the minute rows, so each record is summed once, not once per table."""
    acc: dict[tuple[Any, ...], dict[str, Any]] = {}
    for fine in rows:
        b = fine["bucket"]
        key = (b - b % granularity, *(fine[d] for d in DIMS))
        row = acc.get(key)
        if row is None:
            acc[key] = {**fine, "bucket": key[0]}
            continue
        for s in SUMS:
            row[s] += fine[s]
    return [acc[k] for k in sorted(acc)]


def rollups_of(records: Iterable[Record]) -> dict[int, list[dict[str, Any]]]:
    """{granularity: rollup rows} for every table of ROLLUPS, the records summed once (into minutes)."""
    finest = min(g for g, _t in ROLLUPS)
    out = {finest: rollup_rows(records, finest)}
    for g, _t in sorted(ROLLUPS):
        if g != finest:
            out[g] = coarser(out[finest], g)
    return out


# The per-request row's columns, in the order :func:`request_values` gives them (every column of
# usage_requests but ``seq``; tests/usage check the two agree).
REQUEST_COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "org_id",
    "project_id",
    "api_key_id",
    "user_id",
    "model",
    "upstream",
    "kind",
    "endpoint",
    "status",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "cost_micros",
    "cost_input_micros",
    "units",
    "latency_ms",
    "ttft_ms",
    "stream",
    "disconnected",
    "estimated",
    "attempts",
    "error",
    "upstream_request_id",
    "input_audio_tokens",
    "output_audio_tokens",
    "service_tier",
)


def request_values(r: Record) -> list[Any]:
    """A record's usage_requests row as values in REQUEST_COLUMNS order."""
    return [
        r.id,
        int(r.t),
        r.org_id,
        r.project_id,
        r.key_id,
        r.user_id,
        r.model,
        r.upstream,
        r.kind,
        r.endpoint[:256],
        r.status,
        r.input_tokens,
        r.cached_tokens,
        r.output_tokens,
        r.cost_micros,
        r.cost_input_micros,
        r.units,
        r.latency_ms,
        r.ttft_ms,
        bool(r.stream),
        bool(r.disconnected),
        bool(r.estimated),
        r.attempts,
        r.error[:256] if r.error else None,
        r.upstream_request_id[:128] if r.upstream_request_id else None,
        r.input_audio_tokens,
        r.output_audio_tokens,
        r.service_tier or "default",
    ]


def request_row(r: Record) -> dict[str, Any]:
    return dict(zip(REQUEST_COLUMNS, request_values(r), strict=True))


# --- range queries -------------------------------------------------------------------------------


def _ceil(a: int, g: int) -> int:
    return -(-a // g) * g


def pieces(start: int, end: int, width: int | None, minute_cutoff: int = 0) -> list[tuple[Any, int, int]]:
    """[(table or None for per-request rows, lo, hi)] covering [start, end) exactly.

    Only tables whose granularity divides ``width`` are used, so no rollup row straddles two buckets.
    """
    levels = [(g, t) for g, t in ROLLUPS if width is None or width % g == 0]

    def go(a: int, b: int, i: int) -> list[tuple[Any, int, int]]:
        if a >= b:
            return []
        if i == len(levels):
            return [(None, a, b)]
        g, table = levels[i]
        lo, hi = _ceil(a, g), b // g * g
        if lo >= hi:
            return go(a, b, i + 1)
        if table is UsageMinute and lo < minute_cutoff:  # pruned minutes: per-request rows instead
            cut = min(hi, _ceil(minute_cutoff, g))
            mid = [(None, lo, cut)] + ([(table, cut, hi)] if cut < hi else [])
            return go(a, lo, i + 1) + mid + go(hi, b, i + 1)
        return [*go(a, lo, i + 1), (table, lo, hi), *go(hi, b, i + 1)]

    return go(start, end, 0)


def _bucket_expr(col: Any, width: int | None) -> Any:
    if width is None:
        return literal_column("0")
    w: Any = literal_column(str(int(width)))  # inlined: PostgreSQL must see the same GROUP BY expression
    return col - col % w


def _rollup_select(table: Any, lo: int, hi: int, width: int | None, group_by: Sequence[str], filters: Filters) -> Any:
    b = _bucket_expr(table.bucket, width).label("b")
    cols = [getattr(table, g) for g in group_by]
    stmt = select(b, *cols, *[func.sum(getattr(table, s)).label(s) for s in SUMS]).where(
        table.bucket >= lo, table.bucket < hi, *filters.clauses(table)
    )
    return stmt.group_by(*([b] if width is not None else []), *cols)


def _raw_select(lo: int, hi: int, width: int | None, group_by: Sequence[str], filters: Filters) -> Any:
    r = UsageRequest
    b = _bucket_expr(r.created_at, width).label("b")
    cols = [getattr(r, g) for g in group_by]
    model_request = or_(r.status < 400, r.input_tokens + r.output_tokens > 0)
    sums = [
        func.count().label("requests"),
        func.sum(case((model_request, 1), else_=0)).label("model_requests"),
        func.sum(case((r.status >= 400, 1), else_=0)).label("errors"),
        *[
            func.sum(getattr(r, c)).label(c)
            for c in (
                "input_tokens",
                "cached_tokens",
                "output_tokens",
                "cost_micros",
                "cost_input_micros",
                "units",
                "input_audio_tokens",
                "output_audio_tokens",
            )
        ],
        func.sum(r.latency_ms).label("latency_ms_sum"),
    ]
    stmt = select(b, *cols, *sums).where(r.created_at >= lo, r.created_at < hi, *filters.clauses(r))
    return stmt.group_by(*([b] if width is not None else []), *cols)


async def aggregate(
    conn: AsyncConnection,
    start: int,
    end: int,
    *,
    width: int | None,
    group_by: Sequence[str] = (),
    filters: Filters = Filters(),
    minute_cutoff: int = 0,
) -> dict[tuple[Any, ...], dict[str, float]]:
    """Sums over [start, end) by (bucket start, *group values); bucket start is 0 when width is None.

    Buckets are aligned on multiples of ``width`` (UTC minutes, hours, days). An absent dimension
    reads as None.
    """
    for g in group_by:
        if g not in GROUPABLE:
            raise ValueError(f"cannot group by {g}")
    acc: dict[tuple[Any, ...], dict[str, float]] = {}
    for table, lo, hi in pieces(start, end, width, minute_cutoff):
        stmt = (
            _raw_select(lo, hi, width, group_by, filters)
            if table is None
            else _rollup_select(table, lo, hi, width, group_by, filters)
        )
        for row in await conn.execute(stmt):
            m = row._mapping
            key = (int(m["b"]), *((m[g] or None) for g in group_by))
            sums = acc.get(key)
            if sums is None:
                sums = acc[key] = new_sums()
            for s in _INT_SUMS:
                sums[s] += int(m[s] or 0)
            sums["latency_ms_sum"] += float(m["latency_ms_sum"] or 0.0)
    return acc


# --- retention -----------------------------------------------------------------------------------


def cutoffs(settings: Any, now: float) -> dict[str, int]:
    """Unix second before which each table's rows are deleted (0: kept forever)."""

    def cut(days: int) -> int:
        return int(now) - days * DAY if days > 0 else 0

    return {
        "usage_minute": cut(settings.usage_minute_retention_days),
        "usage_hour": cut(settings.usage_hour_retention_days),
        "usage_day": cut(settings.usage_day_retention_days),
        "usage_requests": cut(settings.usage_request_retention_days),
    }


async def prune(engine: AsyncEngine, settings: Any, now: float) -> dict[str, int]:
    """Delete rows past their retention; returns the rows deleted per table."""
    out: dict[str, int] = {}
    cut = cutoffs(settings, now)
    async with engine.begin() as conn:
        for table in (UsageMinute, UsageHour, UsageDay):
            c = cut[table.__tablename__]
            if c:
                res = await conn.execute(delete(table).where(table.bucket < c))
                out[table.__tablename__] = res.rowcount or 0  # type: ignore[attr-defined]
        c = cut["usage_requests"]
        if c:
            res = await conn.execute(delete(UsageRequest).where(UsageRequest.created_at < c))
            out["usage_requests"] = res.rowcount or 0  # type: ignore[attr-defined]
    return out
