"""Soak test of the usage applier's path to SQL: RSS must level off, and the cost per record is reported.

    .venv/bin/python bench/soak_applier.py [--records 300000] [--database-url postgresql://...]
                                            [--max-growth-mb 8] [--warmup 0.2]

Applies ``--records`` synthetic usage records to a fresh store (SQLite in a temp dir by default; a
PostgreSQL URL to use that instead, e.g. a scratch database) in batches of varied sizes, as the
applier sees them under uneven load (1 to 2,000 records, each batch its own size), with a dozen keys,
models and projects so the rollups upsert as in production. It samples the process RSS after every
batch, reports the rows and bytes each usage table holds at the end (docs/metering.md quotes them per
million requests), and fails (exit 1) when RSS grows by more than ``--max-growth-mb`` between the end of the
warm-up (the first ``--warmup`` fraction of the records) and the end of the run.

The bug it guards (issue 15, finding 6): the applier built a multi-row ``INSERT ... VALUES`` per
batch through SQLAlchemy; every distinct batch size is a distinct statement, each compiled and cached
(SQLAlchemy's compiled cache, asyncpg's prepared statements), so memory grew with the variety of batch
sizes. The applier now runs fixed statements (executemany, or one array-bound statement on
PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.config import database_url_for
from keyplane.store import db
from keyplane.usage.applier import apply_records
from keyplane.usage.journal import Record


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; the peak on other systems)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 1e6
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def make_records(n: int, start: int, t0: float, rng: random.Random) -> list[Record]:
    out = []
    for i in range(start, start + n):
        k = rng.randrange(12)
        out.append(
            Record(
                id=f"req_soak_{i:012d}",
                t=t0 + i * 0.001,
                org_id="org_soak",
                project_id=f"proj_{k % 4}",
                key_id=f"key_{k}",
                user_id=None,
                model=("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")[k % 3],
                upstream="fake",
                kind="completions",
                endpoint="/v1/chat/completions",
                status=200 if k else 429,
                input_tokens=100 + k,
                output_tokens=20 + k,
                cost_micros=90 + k,
                cost_input_micros=15 + k,
                latency_ms=12.5,
                ttft_ms=None,
                stream=bool(k % 2),
                attempts=1,
                upstream_request_id=f"up_{i}",
            )
        )
    return out


TABLES = ("usage_requests", "usage_minute", "usage_hour", "usage_day")


async def storage_of(engine: AsyncEngine) -> dict[str, tuple[int, int | None]]:
    """{table: (rows, bytes on disk with its indexes, or None where the store cannot tell)}; on SQLite
    the database's size (its pages, WAL included) is reported under "(database file)"."""
    out: dict[str, tuple[int, int | None]] = {}
    async with engine.connect() as conn:
        pg = conn.dialect.name == "postgresql"
        for t in TABLES:
            n = int((await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one())
            size = int((await conn.execute(text(f"SELECT pg_total_relation_size('{t}')"))).scalar_one()) if pg else None
            out[t] = (n, size)
        if not pg:
            pages = int((await conn.execute(text("PRAGMA page_count"))).scalar_one())
            page = int((await conn.execute(text("PRAGMA page_size"))).scalar_one())
            out["(database file)"] = (0, pages * page)
    return out


def print_storage(storage: dict[str, tuple[int, int | None]], records: int) -> None:
    per = 1_000_000 / max(1, records)
    print("storage (rows and bytes; per million requests for the per-request table, which grows with them):")
    for t, (n, size) in storage.items():
        mb = f"{size / 1e6:9.1f} MB" if size is not None else "        - "
        extra = (
            f"  = {n * per:,.0f} rows, {size * per / 1e6:,.0f} MB per million requests"
            if t == "usage_requests" and size is not None
            else ""
        )
        print(f"  {t:<18} {n:>9,} rows {mb}{extra}")


async def run(args: argparse.Namespace) -> int:
    tmp = tempfile.TemporaryDirectory()
    url = database_url_for(args.database_url, Path(tmp.name))
    engine = db.make_engine(url)
    await db.migrate(engine)
    rng = random.Random(15)
    t0 = time.time() - 3600
    done = 0
    warm_at = int(args.records * args.warmup)
    warm_rss: float | None = None
    samples: list[tuple[int, float]] = []
    busy = 0.0
    cpu0 = time.process_time()
    while done < args.records:
        size = min(
            args.records - done,
            rng.choice((1, 2, 3, 7, 50, 399, 400, 401, 1000, 1999, 2000))
            if rng.random() < 0.3
            else rng.randint(1, 2000),
        )
        recs = make_records(size, done, t0, rng)
        start = time.perf_counter()
        await apply_records(engine, recs)
        busy += time.perf_counter() - start
        done += size
        if warm_rss is None and done >= warm_at:
            warm_rss = rss_mb()
        samples.append((done, rss_mb()))
    cpu = time.process_time() - cpu0
    storage = await storage_of(engine)
    await engine.dispose()
    tmp.cleanup()
    end_rss = samples[-1][1]
    growth = end_rss - (warm_rss or samples[0][1])
    per_record_us = busy / max(1, done) * 1e6
    print(f"store: {url.split('://', 1)[0]}  records: {done}  batches: {len(samples)}")
    print(
        f"apply cost: {per_record_us:.1f} us per record (wall time in apply_records), "
        f"{cpu / max(1, done) * 1e6:.1f} us of process CPU per record (record building included)"
    )
    print(
        f"RSS: {samples[0][1]:.1f} MB after the first batch, {warm_rss:.1f} MB after warm-up, "
        f"{end_rss:.1f} MB at the end: growth {growth:+.1f} MB (limit {args.max_growth_mb} MB)"
    )
    print_storage(storage, done)
    for n, mb in samples[:: max(1, len(samples) // 10)]:
        print(f"  {n:>8} records  {mb:8.1f} MB")
    if growth > args.max_growth_mb:
        print("FAIL: memory keeps growing after warm-up")
        return 1
    print("ok: memory levels off")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=300_000)
    p.add_argument("--database-url", default="", help="empty: SQLite in a temp dir; postgresql://... to use it")
    p.add_argument("--max-growth-mb", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the records before the baseline")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
