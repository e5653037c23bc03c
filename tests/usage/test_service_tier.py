"""The service tier that served a request, kept as a rollup key: the Usage API's group_by=service_tier (issue 17).

End to end through the official SDK (the fake upstream answers the tier asked for when it is flex or priority),
the rollups at every granularity, the journal's older records, and migration 0019 over a store with rows.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from openai import OpenAI
from sqlalchemy import inspect, text

from keyplane.config import database_url_for
from keyplane.store import db
from keyplane.usage import rollups
from keyplane.usage.applier import apply_records
from keyplane.usage.journal import Record, encode_frame, parse_frames, served_tier
from tests.support import _pg_exec, _pg_url
from tests.usage.support import drain

HI = [{"role": "user", "content": "hi there"}]


def _by_tier(page) -> dict[str | None, dict[str, int]]:
    out: dict[str | None, dict[str, int]] = {}
    for bucket in page.data:
        for r in bucket.results:
            assert r.service_tier not in out, "one result per tier"
            out[r.service_tier] = {"n": r.num_model_requests, "in": r.input_tokens, "out": r.output_tokens}
    return out


def test_group_by_service_tier_splits_what_each_tier_served(gateway):
    srv = gateway()
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    admin = OpenAI(base_url=srv.v1, admin_api_key=srv.admin_key, api_key="unused", max_retries=0)
    start = int(time.time()) - 5
    made: dict[str, dict[str, int]] = {}
    tier_of: dict[str, str] = {}

    def count(tier: str, rid: str, n_in: int, n_out: int) -> None:
        m = made.setdefault(tier, {"n": 0, "in": 0, "out": 0})
        m["n"] += 1
        m["in"] += n_in
        m["out"] += n_out
        tier_of[rid] = tier

    for asked in ("priority", "priority", None, "flex", "auto"):
        kw = {"service_tier": asked} if asked else {}
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, max_tokens=5, **kw)
        answer = raw.parse()
        served = answer.service_tier
        assert served == (asked if asked in ("priority", "flex") else "default")
        assert answer.usage is not None
        count(served, raw.headers["x-keyplane-request-id"], answer.usage.prompt_tokens, answer.usage.completion_tokens)
    r = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", service_tier="priority")
    u = r.parse().usage
    assert u is not None
    count("priority", r.headers["x-keyplane-request-id"], u.input_tokens, u.output_tokens)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o",
        messages=HI,
        stream=True,
        service_tier="priority",
        stream_options={"include_usage": True},
    ) as resp:
        chunks = list(resp.parse())
        rid = resp.headers["x-keyplane-request-id"]
    usage = chunks[-1].usage
    assert usage is not None
    count("priority", rid, usage.prompt_tokens, usage.completion_tokens)
    drain(srv)

    usage_api = admin.admin.organization.usage
    grouped = _by_tier(usage_api.completions(start_time=start, bucket_width="1d", group_by=["service_tier"]))
    assert grouped == made
    assert made["priority"]["n"] == 4 and made["default"]["n"] == 2 and made["flex"]["n"] == 1
    # Not grouped by it: the tiers summed into one result, whose service_tier is null (as every group field).
    whole = _by_tier(usage_api.completions(start_time=start, bucket_width="1d"))
    assert list(whole) == [None]
    assert whole[None] == {k: sum(m[k] for m in made.values()) for k in ("n", "in", "out")}
    # With another dimension: each (model, tier) apart.
    page = usage_api.completions(start_time=start, bucket_width="1d", group_by=["model", "service_tier"])
    pairs = {(r.model, r.service_tier): r.num_model_requests for b in page.data for r in b.results}
    assert pairs == {
        ("gpt-4o-mini", "priority"): 3,
        ("gpt-4o-mini", "default"): 2,
        ("gpt-4o-mini", "flex"): 1,
        ("gpt-4o", "priority"): 1,
    }
    # Each request record says its tier (GET /v1/organization/usage/requests, a keyplane extension).
    got = httpx.get(
        srv.v1 + "/organization/usage/requests",
        params={"start_time": start},
        headers={"Authorization": f"Bearer {srv.admin_key}"},
    )
    assert got.status_code == 200, got.text
    assert {x["id"]: x["service_tier"] for x in got.json()["data"]} == tier_of


T0 = 1_800_000_000 - 1_800_000_000 % 86400  # a UTC midnight


def _rec(i: int, t: float, tier: str = "default", **kw: object) -> Record:
    return Record(
        f"req_tier_{i}",
        t,
        "org",
        "proj_1",
        "key_1",
        None,
        "gpt-4o-mini",
        "fake",
        "completions",
        "/v1/chat/completions",
        200,
        input_tokens=10 + i,
        output_tokens=1 + i,
        cost_micros=100,
        service_tier=tier,
        **kw,  # type: ignore[arg-type]
    )


async def test_every_granularity_keeps_the_tiers_apart(engine):
    """Rollup rows (days, hours, minutes) and per-request rows (ragged seconds) answer the same split."""
    tiers = ["default", "priority", "flex", "priority"]
    records = [_rec(i, T0 + i * 1801.5, tiers[i % 4]) for i in range(200)]  # ~4 days, every table used
    assert await apply_records(engine, records) == 200
    assert await apply_records(engine, records) == 0  # idempotent: the tier is no new way to count twice
    want: dict[tuple[int, str], int] = {}
    for r in records:
        if T0 + 7 <= r.t < T0 + 3 * 86400 + 11:
            b = int(r.t) - int(r.t) % 86400
            want[(b, r.service_tier)] = want.get((b, r.service_tier), 0) + r.input_tokens
    async with engine.connect() as conn:
        got = await rollups.aggregate(conn, T0 + 7, T0 + 3 * 86400 + 11, width=86400, group_by=["service_tier"])
        whole = await rollups.aggregate(conn, T0 + 7, T0 + 3 * 86400 + 11, width=86400)
        minutes = (await conn.execute(text("SELECT count(*) FROM usage_minute"))).scalar()
    assert {k: int(v["input_tokens"]) for k, v in got.items()} == want
    for (b,), sums in whole.items():
        assert sums["input_tokens"] == sum(v for (b2, _), v in want.items() if b2 == b)
    assert minutes == 200  # one record per minute row: 1801.5 s apart


def test_the_tier_a_record_keeps():
    assert [served_tier(x) for x in (None, "", "auto", "default", "flex", "priority", "scale")] == [
        "default",
        "default",
        "default",
        "default",
        "flex",
        "priority",
        "scale",
    ]
    assert served_tier("reserved_2026") == "reserved_2026"  # a tier OpenAI adds later is kept as it is
    for junk in ("Priority", "x" * 33, "a b", "1x", "pri\u00f6rity", 3, {"tier": "flex"}):
        assert served_tier(junk) == "default"


def test_an_older_journal_record_reads_as_default():
    """Segments written before the field existed (27 fields) decode with service_tier default."""
    rec = _rec(1, T0 + 1.0, "priority")
    fields = msgspec.to_builtins(rec)  # array_like: the fields in order
    old = msgspec.msgpack.encode(fields[: type(rec).__struct_fields__.index("service_tier")])
    frame = struct.pack("<II", len(old), zlib.crc32(old)) + old
    (got, _end), *_ = parse_frames(frame + encode_frame(rec))[0]
    assert got.service_tier == "default" and got.input_tokens == rec.input_tokens
    assert parse_frames(encode_frame(rec))[0][0][0].service_tier == "priority"


# --- migration 0019 over a store with rows -------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store with no tables yet (the migrations run step by step)."""
    if request.param == "sqlite":
        yield database_url_for("", tmp_path)
        return
    name = f"kp_t_tier_{secrets.token_hex(4)}"
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}"'))
    try:
        yield database_url_for(_pg_url(name), tmp_path)
    finally:
        asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _alembic(sync_conn: object, action: str, rev: str) -> None:
    from alembic import command

    cfg = db._alembic_config()
    cfg.attributes["connection"] = sync_conn
    getattr(command, action)(cfg, rev)


_KEY = "bucket, project_id, api_key_id, user_id, model, kind"
_SUMS = (
    "requests, model_requests, errors, input_tokens, cached_tokens, output_tokens, cost_micros, cost_input_micros, "
    "latency_ms_sum, units, input_audio_tokens, output_audio_tokens"
)


async def _tables(conn) -> dict[str, list[tuple[object, ...]]]:
    out = {}
    for t in ("usage_minute", "usage_hour", "usage_day"):
        tier = ", service_tier" if "service_tier" in {c["name"] for c in await _columns(conn, t)} else ""
        rows = await conn.execute(text(f"SELECT {_KEY}, {_SUMS}{tier} FROM {t} ORDER BY {_KEY}{tier}"))
        out[t] = [tuple(r) for r in rows]
    return out


async def _columns(conn, table: str) -> list[dict[str, object]]:
    return await conn.run_sync(lambda c: inspect(c).get_columns(table))


async def _pk(conn, table: str) -> list[str]:
    return (await conn.run_sync(lambda c: inspect(c).get_pk_constraint(table)))["constrained_columns"]


def test_migration_0019_keeps_the_rows_there_as_default(empty_store):
    async def run() -> None:
        engine = db.make_engine(empty_store)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_alembic, "upgrade", "0018")
            before = [_rec(i, T0 + 60 * i + 5) for i in range(3)]  # applied as 0018 stored them
            async with engine.begin() as conn:
                for r in before:
                    row = rollups.request_row(r)
                    row.pop("service_tier")
                    cols = ", ".join(row)
                    await conn.execute(
                        text(f"INSERT INTO usage_requests ({cols}) VALUES ({', '.join(':' + c for c in row)})"),
                        row,
                    )
                    for g, t in ((60, "usage_minute"), (3600, "usage_hour"), (86400, "usage_day")):
                        (agg,) = rollups.rollup_rows([r], g)
                        agg.pop("service_tier")
                        names = ", ".join(agg)
                        sets = ", ".join(f"{s} = {t}.{s} + excluded.{s}" for s in _SUMS.split(", "))
                        await conn.execute(
                            text(
                                f"INSERT INTO {t} ({names}) VALUES ({', '.join(':' + c for c in agg)}) "
                                f"ON CONFLICT ({_KEY}) DO UPDATE SET {sets}"
                            ),
                            agg,
                        )
                old = await _tables(conn)
            await db.migrate(engine)  # 0019 (and any later one)
            async with engine.connect() as conn:
                after = await _tables(conn)
                for t in ("usage_minute", "usage_hour", "usage_day"):
                    assert after[t] == [(*row, "default") for row in old[t]]
                    assert await _pk(conn, t) == [*_KEY.split(", "), "service_tier"]
                tiers = (await conn.execute(text("SELECT id, service_tier FROM usage_requests ORDER BY id"))).all()
                assert [tuple(x) for x in tiers] == [(r.id, "default") for r in before]
            # New records after the migration: a default one adds to the old row, a priority one is a row apart.
            await apply_records(engine, [_rec(10, T0 + 7, "default"), _rec(11, T0 + 8, "priority")])
            async with engine.connect() as conn:
                day = await rollups.aggregate(conn, T0, T0 + 86400, width=86400, group_by=["service_tier"])
                days = (await conn.execute(text("SELECT service_tier, requests FROM usage_day ORDER BY 1"))).all()
            assert {k[1]: int(v["requests"]) for k, v in day.items()} == {"default": 4, "priority": 1}
            assert [tuple(x) for x in days] == [("default", 4), ("priority", 1)]
            # Downgrade: the tiers of a key summed back into one row; upgrade again: all default.
            async with engine.begin() as conn:
                await conn.run_sync(_alembic, "downgrade", "0018")
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT requests FROM usage_day"))).scalars().all() == [5]
                assert await _pk(conn, "usage_day") == _KEY.split(", ")
            await db.migrate(engine)
            async with engine.connect() as conn:
                days = (await conn.execute(text("SELECT service_tier, requests FROM usage_day"))).all()
            assert [tuple(x) for x in days] == [("default", 5)]
        finally:
            await engine.dispose()

    asyncio.run(run())
