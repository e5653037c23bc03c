"""Usage ingestion: backfill on first poll, a cursor that survives restarts, re-polls that never double count."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from sqlalchemy import func, select

from keyplane.config import ProviderSection
from keyplane.providers.connector import Connector
from keyplane.providers.ingest import cursor, ingest
from keyplane.providers.models import ProviderUsage
from keyplane.store import db
from keyplane.testing.fake_org import Bucket
from tests.support import make_settings

NOW = 1_800_000_000 // 3600 * 3600 + 1800  # half past an hour


async def _poll(url: str, running, now: int) -> dict[str, int]:
    engine = db.make_engine(url)  # a fresh engine per poll: what a restart sees
    try:
        await db.migrate(engine)
        cfg = ProviderSection(name="acme", base_url=running.base_url, admin_key_env="K", backfill_days=2)
        conn = Connector(cfg, {"K": running.fake.admin_key})
        try:
            return await ingest(db.sessionmaker(engine), conn, now, cfg.backfill_days)
        finally:
            await conn.close()
    finally:
        await engine.dispose()


async def _totals(url: str) -> tuple[int, int, int | None]:
    engine = db.make_engine(url)
    try:
        async with db.sessionmaker(engine)() as s:
            tokens = (
                await s.execute(
                    select(func.sum(ProviderUsage.input_tokens + ProviderUsage.output_tokens)).where(
                        ProviderUsage.stream == "completions"
                    )
                )
            ).scalar() or 0
            cost = (await s.execute(select(func.sum(ProviderUsage.cost_micros)))).scalar() or 0
            return int(tokens), int(cost), await cursor(s, "acme", "completions")
    finally:
        await engine.dispose()


def test_backfill_cursor_and_idempotent_repoll(fake_provider, settings):
    database_url = settings.database_url
    fake = fake_provider.fake
    hour = NOW // 3600 * 3600
    fake.usage += [
        Bucket(hour - 3 * 86400, "proj_data", "key_data1", "gpt-4o", 999, 999),  # before the backfill
        Bucket(hour - 5 * 3600, "proj_data", "key_data1", "gpt-4o", 100, 50),
        Bucket(hour - 5 * 3600, "proj_data", "key_etl", "gpt-4o", 10, 5),
        Bucket(hour, "proj_data", "key_data1", "gpt-4o-mini", 1000, 500),
    ]
    fake.costs.append({"start_time": hour // 86400 * 86400, "project_id": "proj_data", "value": 1.25})

    rows = asyncio.run(_poll(database_url, fake_provider, NOW))
    assert rows["completions"] == 3 and rows["costs"] == 1
    tokens, cost, cur = asyncio.run(_totals(database_url))
    assert tokens == 150 + 15 + 1500 and cost == 1_250_000
    assert cur == hour  # the newest bucket: it may still grow
    first = [parse_qs(q) for _, p, q in fake.requests if p.endswith("/usage/completions")]
    assert first[0]["start_time"] == [str((NOW - 2 * 86400) // 3600 * 3600)]
    assert first[0]["bucket_width"] == ["1h"] and first[0]["group_by"] == ["project_id", "api_key_id", "model"]

    # The current hour grows; a new poll (after a restart: a new engine) replaces it, counts nothing twice.
    fake.requests.clear()
    fake.usage[-1].output_tokens = 900
    asyncio.run(_poll(database_url, fake_provider, NOW + 600))
    tokens, cost, cur = asyncio.run(_totals(database_url))
    assert tokens == 150 + 15 + 1900 and cost == 1_250_000 and cur == hour
    again = [parse_qs(q) for _, p, q in fake.requests if p.endswith("/usage/completions")]
    assert again[0]["start_time"] == [str(hour)]  # from the cursor, not the backfill window

    asyncio.run(_poll(database_url, fake_provider, NOW + 600))
    assert asyncio.run(_totals(database_url))[:2] == (tokens, cost)


def test_retries_inside_a_poll_do_not_double_count(fake_provider, tmp_path):
    url = make_settings(tmp_path / "home").database_url
    fake = fake_provider.fake
    hour = NOW // 3600 * 3600
    fake.usage.append(Bucket(hour - 3600, "proj_data", "key_data1", "gpt-4o", 100, 100))
    fake.faults.extend([(503, None), (429, 0)])
    asyncio.run(_poll(url, fake_provider, NOW))
    asyncio.run(_poll(url, fake_provider, NOW + 3600))
    assert asyncio.run(_totals(url))[0] == 200
