"""Usage ingestion: every /organization/usage/<kind> hourly, grouped by project, key and model, and
/organization/costs daily, polled incrementally from a cursor kept in SQL.

Idempotent: a bucket is unique per (provider, stream, start, project, key, model) and a re-poll replaces
it (the provider's latest hour grows until it is complete), so nothing is ever counted twice. The cursor
is the start of the newest bucket seen, so the next poll re-reads that (possibly partial) bucket and
nothing older; on the first poll it starts ``backfill_days`` back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyplane.providers.connector import USAGE_KINDS, Connector
from keyplane.providers.models import ProviderCursor, ProviderUsage

if TYPE_CHECKING:
    from keyplane.billing.prices import PriceTable

HOUR = 3600
DAY = 86400
_WIDTH = {"costs": DAY}
MAX_SPAN_DAYS = 31  # one poll reads at most a month per stream: a long outage catches up over several polls


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def _str(v: Any) -> str:
    return str(v)[:128] if v is not None else ""


def _row(provider: str, stream: str, bucket: dict[str, Any], r: dict[str, Any]) -> ProviderUsage:
    start, end = _int(bucket.get("start_time")), _int(bucket.get("end_time"))
    if stream == "costs":
        amount = r.get("amount") or {}
        try:
            micros = round(float(amount.get("value") or 0) * 1_000_000)
        except (TypeError, ValueError):
            micros = 0
        return ProviderUsage(
            provider=provider,
            stream=stream,
            start_time=start,
            end_time=end,
            project_id=_str(r.get("project_id")),
            api_key_id="",
            model=_str(r.get("line_item")),
            input_tokens=0,
            output_tokens=0,
            requests=0,
            cost_micros=micros,
            data=orjson.dumps(r).decode(),
        )
    return ProviderUsage(
        provider=provider,
        stream=stream,
        start_time=start,
        end_time=end,
        project_id=_str(r.get("project_id")),
        api_key_id=_str(r.get("api_key_id")),
        model=_str(r.get("model")),
        input_tokens=_int(r.get("input_tokens")),
        output_tokens=_int(r.get("output_tokens")),
        requests=_int(
            r.get("num_model_requests") or r.get("num_requests") or r.get("num_images") or r.get("num_sessions")
        ),
        cost_micros=0,
        data=orjson.dumps(r).decode(),
    )


async def cursor(s: AsyncSession, provider: str, stream: str) -> int | None:
    row = (
        await s.execute(
            select(ProviderCursor).where(ProviderCursor.provider == provider, ProviderCursor.stream == stream)
        )
    ).scalar()
    return row.next_start if row else None


async def ingest_stream(
    sessions: async_sessionmaker[AsyncSession], conn: Connector, stream: str, now: int, backfill_days: int
) -> int:
    """Poll one stream from its cursor to now; returns how many buckets (rows) were written."""
    width = _WIDTH.get(stream, HOUR)
    async with sessions() as s:
        start = await cursor(s, conn.name, stream)
    if start is None:
        start = (now - backfill_days * DAY) // width * width
    end = min(now // width * width + width, start + MAX_SPAN_DAYS * DAY)
    if end <= start:
        return 0
    source = conn.costs(start, end) if stream == "costs" else conn.usage(stream, start, end)
    rows: list[ProviderUsage] = []
    newest = start
    async for bucket in source:
        results = bucket.get("results") or []
        b_start = _int(bucket.get("start_time"))
        if results:
            newest = max(newest, b_start)
        rows.extend(_row(conn.name, stream, bucket, r) for r in results if isinstance(r, dict))
    # The next poll starts at the newest bucket with data (it may still grow) or, past an empty stretch,
    # one bucket before the end read: the provider reports an hour late at times, and re-reading is free.
    next_start = max(start, newest, min(end, now // width * width) - width)
    async with sessions() as s, s.begin():
        for r in rows:
            await s.execute(
                delete(ProviderUsage).where(
                    ProviderUsage.provider == r.provider,
                    ProviderUsage.stream == r.stream,
                    ProviderUsage.start_time == r.start_time,
                    ProviderUsage.project_id == r.project_id,
                    ProviderUsage.api_key_id == r.api_key_id,
                    ProviderUsage.model == r.model,
                )
            )
            s.add(r)
        row = (
            await s.execute(
                select(ProviderCursor).where(ProviderCursor.provider == conn.name, ProviderCursor.stream == stream)
            )
        ).scalar()
        if row is None:
            s.add(ProviderCursor(provider=conn.name, stream=stream, next_start=next_start, updated_at=now))
        else:
            row.next_start, row.updated_at = next_start, now
    return len(rows)


async def ingest(
    sessions: async_sessionmaker[AsyncSession], conn: Connector, now: int, backfill_days: int
) -> dict[str, int]:
    out: dict[str, int] = {}
    for stream in (*USAGE_KINDS, "costs"):
        out[stream] = await ingest_stream(sessions, conn, stream, now, backfill_days)
    return out


def estimated_cost(r: ProviderUsage, prices: PriceTable | None) -> int:
    """Micro-dollars of one hourly token bucket at the price table's list prices (0 when the model has no
    token price). The provider's own costs are daily and per project or key: too coarse for an hourly
    rule, so spend_surge and cost ceilings on provider keys run on this estimate."""
    if prices is None or not r.model or not (r.input_tokens or r.output_tokens):
        return 0
    price = prices.lookup(r.model)
    if price is None or not price.tokens:
        return 0
    try:
        cached = _int(orjson.loads(r.data).get("input_cached_tokens"))
    except (orjson.JSONDecodeError, AttributeError):
        cached = 0
    # Not price.cost(): its long-context tier is per request, and an hour sums many requests.
    cached = min(max(cached, 0), r.input_tokens)
    total = (r.input_tokens - cached) * price.input + cached * price.cached_input + r.output_tokens * price.output
    return -(-total // 1_000_000)


async def hourly_by_key(
    s: AsyncSession, provider: str, since: int, prices: PriceTable | None = None
) -> dict[tuple[str, str], dict[int, dict[str, int]]]:
    """(project, key) -> hour start -> counters (t tokens, r requests, c cost micros: keyplane.guard's names).
    ``c`` is estimated from the tokens per model with ``prices`` (:func:`estimated_cost`)."""
    q = select(ProviderUsage).where(
        ProviderUsage.provider == provider, ProviderUsage.start_time >= since, ProviderUsage.stream != "costs"
    )
    out: dict[tuple[str, str], dict[int, dict[str, int]]] = {}
    for r in (await s.execute(q)).scalars():
        c = out.setdefault((r.project_id, r.api_key_id), {}).setdefault(r.start_time, {"t": 0, "r": 0, "c": 0})
        c["t"] += r.input_tokens + r.output_tokens
        c["r"] += r.requests
        c["c"] += estimated_cost(r, prices)
    return out
