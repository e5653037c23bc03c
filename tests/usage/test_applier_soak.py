"""The applier's path to SQL runs a fixed set of statements whatever the batch sizes (issue 15, finding 6).

A multi-row ``INSERT ... VALUES`` built per batch was a new SQL text for every batch size; each was
compiled, prepared and cached by the driver, and the process grew by ~270 bytes per request without
levelling off. bench/soak_applier.py measures the memory itself; this test pins the cause: the
number of distinct statements sent to the database does not grow with the variety of batch sizes.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from keyplane.usage.applier import apply_records
from keyplane.usage.models import UsageDay, UsageHour, UsageMinute, UsageRequest
from tests.usage.test_rollups import make_records

ROOT = Path(__file__).resolve().parents[2]


async def test_statement_texts_do_not_grow_with_batch_sizes(engine):
    seen: set[str] = set()

    def remember(_conn, _cursor, statement, _params, _context, _executemany) -> None:
        seen.add(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", remember)
    records = make_records(3000, seed=11)
    sizes = [1, 2, 3, 17, 64, 399, 400, 401, 512, 603]  # sums to 2402
    done = 0
    for n in sizes:
        assert await apply_records(engine, records[done : done + n]) == n
        done += n
    after_first = len(seen)
    rnd = random.Random(3)
    while done < len(records):
        n = min(len(records) - done, rnd.randint(1, 90))
        await apply_records(engine, records[done : done + n])
        done += n
    event.remove(engine.sync_engine, "before_cursor_execute", remember)
    # begin/commit aside, a handful of fixed statements: the request insert (and on SQLite the lookup of
    # ids already stored) and one upsert per rollup table; nothing per batch size.
    data = {s for s in seen if s.lstrip().upper().startswith(("INSERT", "SELECT"))}
    assert len(data) <= 5, sorted(s[:80] for s in data)
    assert len(seen) == after_first

    # And the numbers are right: every record once, in every rollup.
    assert await apply_records(engine, records[100:200] + make_records(10, seed=12)) == 10
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(UsageRequest))).scalar() == 3010
        for table in (UsageMinute, UsageHour, UsageDay):
            total = (await conn.execute(select(func.sum(table.requests), func.sum(table.cost_micros)))).one()
            expected = sum(r.cost_micros for r in records) + sum(r.cost_micros for r in make_records(10, seed=12))
            assert (int(total[0]), int(total[1])) == (3010, expected)


async def test_null_and_long_fields_round_trip(engine):
    r = make_records(1, seed=5)[0]
    import msgspec

    odd = msgspec.structs.replace(
        r,
        id="req_odd",
        model=None,
        user_id=None,
        ttft_ms=None,
        error="e" * 300,
        upstream_request_id="u" * 200,
        stream=True,
        estimated=True,
    )
    assert await apply_records(engine, [odd]) == 1
    async with engine.connect() as conn:
        row = (await conn.execute(select(UsageRequest).where(UsageRequest.id == "req_odd"))).one()
    assert row.model is None and row.ttft_ms is None and row.stream is True and row.estimated is True
    assert len(row.error) == 256 and len(row.upstream_request_id) == 128


@pytest.mark.slow
def test_soak_benchmark_memory_levels_off(tmp_path):
    """The soak benchmark itself (SQLite), shortened: it exits 1 when RSS grows after warm-up."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak_applier.py"), "--records", "60000"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
