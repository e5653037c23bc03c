"""Applying records to SQL (idempotent by request id) and exact range queries over the rollups."""

from __future__ import annotations

import itertools
import random

import pytest
from sqlalchemy import func, select

from keyplane.usage import rollups
from keyplane.usage.applier import apply_records
from keyplane.usage.journal import Record
from keyplane.usage.models import UsageDay, UsageHour, UsageMinute, UsageRequest

T0 = 1_800_000_000 - 1_800_000_000 % 86400  # a UTC midnight
KEYS = [("proj_a", "key_1", "user_1"), ("proj_a", "key_2", None), ("proj_b", "key_3", "user_2")]
MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]


def make_records(n: int, seed: int = 7, span: int = 3 * 86400) -> list[Record]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        project, key, user = rnd.choice(KEYS)
        model = rnd.choice(MODELS)
        status = rnd.choice([200, 200, 200, 200, 429, 500])
        tin = rnd.randint(1, 500) if status == 200 else 0
        out.append(
            Record(
                id=f"req_{seed}_{i}",
                t=T0 + rnd.uniform(0, span),
                org_id="org",
                project_id=project,
                key_id=key,
                user_id=user,
                model=model,
                upstream="fake",
                kind="embeddings" if model.startswith("text-") else "completions",
                endpoint="/v1/x",
                status=status,
                input_tokens=tin,
                cached_tokens=tin // 4,
                output_tokens=rnd.randint(0, 300) if status == 200 else 0,
                cost_micros=rnd.randint(0, 5000),
                cost_input_micros=rnd.randint(0, 100),
                latency_ms=rnd.uniform(1, 900),
            )
        )
    return out


def brute(records, start, end, width, group_by, flt: rollups.Filters):
    acc: dict = {}
    for r in records:
        t = int(r.t)
        if not start <= t < end:
            continue
        vals = {
            "project_id": r.project_id,
            "api_key_id": r.key_id,
            "user_id": r.user_id,
            "model": r.model,
            "kind": r.kind,
        }
        if flt.project_ids and r.project_id not in flt.project_ids:
            continue
        if flt.models and r.model not in flt.models:
            continue
        if flt.kinds and r.kind not in flt.kinds:
            continue
        b = t - t % width if width else 0
        key = (b, *(vals[g] for g in group_by))
        s = acc.setdefault(
            key, {"requests": 0, "model_requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_micros": 0}
        )
        s["requests"] += 1
        s["model_requests"] += 1 if r.model_request else 0
        s["input_tokens"] += r.input_tokens
        s["output_tokens"] += r.output_tokens
        s["cost_micros"] += r.cost_micros
    return acc


def test_pieces_cover_the_range_exactly():
    rnd = random.Random(1)
    for _ in range(500):
        a = T0 + rnd.randint(0, 3 * 86400)
        b = a + rnd.randint(1, 3 * 86400)
        for width in (None, 60, 3600, 86400):
            ps = rollups.pieces(a, b, width, minute_cutoff=rnd.choice([0, a + 5000]))
            assert ps[0][1] == a and ps[-1][2] == b
            assert all(p[2] == q[1] for p, q in itertools.pairwise(ps))
            for table, lo, hi in ps:
                if table is not None:
                    g = {UsageDay: 86400, UsageHour: 3600, UsageMinute: 60}[table]
                    assert lo % g == 0 and hi % g == 0 and (width is None or width % g == 0)


async def test_apply_is_idempotent_and_rollups_agree(engine):
    records = make_records(600)
    assert await apply_records(engine, records[:400]) == 400
    assert await apply_records(engine, records[200:]) == 200  # overlap: only the new ones count
    assert await apply_records(engine, records) == 0
    assert await apply_records(engine, records[:5] + records[:5]) == 0  # duplicates inside one batch
    async with engine.connect() as conn:
        n = (await conn.execute(select(func.count()).select_from(UsageRequest))).scalar()
        assert n == 600
        for table in (UsageMinute, UsageHour, UsageDay):
            total = (await conn.execute(select(func.sum(table.requests), func.sum(table.input_tokens)))).one()
            assert int(total[0]) == 600 and int(total[1]) == sum(r.input_tokens for r in records)


@pytest.mark.parametrize("seed", [1, 2])
async def test_range_queries_match_the_records(engine, seed):
    records = make_records(800, seed=seed)
    await apply_records(engine, records)
    rnd = random.Random(seed)
    cases = [(T0, T0 + 3 * 86400, 86400, (), rollups.Filters())]
    for _ in range(25):
        width = rnd.choice([None, 60, 3600, 86400])
        a = T0 + rnd.randint(-3600, 2 * 86400)
        b = a + rnd.randint(1, 86400 * 2)
        group_by = tuple(rnd.sample(["project_id", "api_key_id", "user_id", "model", "kind"], rnd.randint(0, 2)))
        flt = rnd.choice(
            [
                rollups.Filters(),
                rollups.Filters(project_ids=("proj_a",)),
                rollups.Filters(models=("gpt-4o", "text-embedding-3-small"), kinds=("completions",)),
            ]
        )
        cases.append((a, b, width, group_by, flt))
    async with engine.connect() as conn:
        for a, b, width, group_by, flt in cases:
            cutoff = rnd.choice([0, a + 7200])
            got = await rollups.aggregate(conn, a, b, width=width, group_by=group_by, filters=flt, minute_cutoff=cutoff)
            want = brute(records, a, b, width, group_by, flt)
            assert set(got) == set(want), (a, b, width, group_by)
            for k, w in want.items():
                for field, v in w.items():
                    assert got[k][field] == v, (k, field)


async def test_retention_prunes_each_table(engine):
    from types import SimpleNamespace

    records = make_records(300, span=40 * 86400)
    await apply_records(engine, records)
    now = T0 + 40 * 86400
    cfg = SimpleNamespace(
        usage_minute_retention_days=7,
        usage_hour_retention_days=20,
        usage_day_retention_days=0,
        usage_request_retention_days=30,
    )
    deleted = await rollups.prune(engine, cfg, now)
    assert deleted["usage_minute"] > 0 and deleted["usage_requests"] > 0 and "usage_day" not in deleted
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.min(UsageMinute.bucket)))).scalar() >= now - 7 * 86400
        assert (await conn.execute(select(func.min(UsageHour.bucket)))).scalar() >= now - 20 * 86400
        assert (await conn.execute(select(func.min(UsageRequest.created_at)))).scalar() >= now - 30 * 86400
        assert int((await conn.execute(select(func.sum(UsageDay.requests)))).scalar()) == 300
        # Minutes past their retention are answered from the request rows (kept 30 days).
        a, b = now - 10 * 86400 + 17, now - 9 * 86400 + 5
        got = await rollups.aggregate(conn, a, b, width=60, minute_cutoff=now - 7 * 86400)
        want = brute(records, a, b, 60, (), rollups.Filters())
        assert {k: v["requests"] for k, v in got.items()} == {k: v["requests"] for k, v in want.items()}
