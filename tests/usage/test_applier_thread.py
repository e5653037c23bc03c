"""The applier in its own thread, fed in memory (issue 13): exact apply, APPLY_STEPS, crash replay, gauges."""

from __future__ import annotations

import os
import threading
import time

import httpx
import msgspec
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from keyplane.config import database_url_for
from keyplane.store import db
from keyplane.usage.applier import APPLY_STEPS, Applier, _dispose
from keyplane.usage.journal import JournalWriter, Record
from keyplane.usage.journal_tail import Tail
from tests.usage.support import drain


def rec(i: int) -> Record:
    return Record(
        f"req_t{i}",
        1_800_000_000.0 + i,
        "org_1",
        "proj_1",
        "key_1",
        "user_1",
        "gpt-4o-mini",
        "fake",
        "completions",
        "/v1/chat/completions",
        200,
        10,
        0,
        5,
        100 + i,
        60,
        12.5,
    )


def thread_engine(url: str):
    """The applier thread's own engine, as keyplane.usage makes it: blocking on a SQLite file, async otherwise."""
    if url.startswith("sqlite"):
        return lambda: db.make_blocking_engine(url, 30.0)
    return lambda: db.make_engine(url)


async def _count(engine) -> tuple[int, int]:
    async with engine.connect() as conn:
        n = (await conn.execute(text("SELECT count(*) FROM usage_requests"))).scalar_one()
        total = (await conn.execute(text("SELECT coalesce(sum(cost_micros), 0) FROM usage_requests"))).scalar_one()
    return int(n), int(total)


async def test_threaded_applier_applies_from_memory_and_runs_apply_steps(engine, database_url, tmp_path):
    url = database_url_for(database_url, tmp_path)
    folder = tmp_path / "journal"
    writer = JournalWriter(folder, fsync="never", segment_bytes=4096)  # small segments: rotation mid-batch
    writer.open()
    stepped: list[tuple[str, int]] = []

    def step(conn, records):  # runs in the applier's transaction, on the applier thread
        stepped.extend((r.id, threading.get_ident()) for r in records)

    APPLY_STEPS.setdefault(engine, []).append(step)
    applier = Applier(engine, folder, writer, batch=50, interval=3600)
    assert applier.handoff is not None and writer.handoff is applier.handoff
    applier.start(thread_engine(url))
    try:
        for i in range(230):
            writer.append(rec(i))
            applier.notify()
        await applier.apply_pending()  # from the serving loop: runs on the applier's thread
        assert applier.lag == 0 and applier.lag_seconds == 0.0
        assert await _count(engine) == (230, sum(100 + i for i in range(230)))
        assert sorted(i for i, _ in stepped) == sorted(f"req_t{i}" for i in range(230))
        assert {t for _, t in stepped} == {applier._thread.ident}  # not the serving thread
        # The applied position is exactly the journal's end: a read-back finds nothing left.
        assert Tail(folder, writer.writer, final=False).read(10_000) == []
        late: list[int] = []
        for n in (1000, 1001):  # a wake left by the notify() calls above may apply the first one at once
            writer.append(rec(n))
            late.append(n)
            time.sleep(0.01)
            if applier.lag:
                break
        assert applier.lag == 1 and applier.lag_seconds >= 0.01
    finally:
        drained = await applier.stop()
        APPLY_STEPS[engine].remove(step)
    assert drained and applier._thread is None
    assert await _count(engine) == (230 + len(late), sum(100 + i for i in range(230)) + sum(100 + n for n in late))
    writer.close()
    writer.release()


async def test_crash_with_records_in_memory_replays_exactly_once(engine, database_url, tmp_path):
    """Records handed over in memory but not applied when the process dies are replayed from the journal;
    those applied are not applied twice."""
    url = database_url_for(database_url, tmp_path)
    folder = tmp_path / "journal"
    writer = JournalWriter(folder, fsync="never")
    writer.open()
    applier = Applier(engine, folder, writer, batch=40, interval=3600)
    applier.start(thread_engine(url))
    for i in range(100):
        writer.append(rec(i))
    await applier.apply_pending()
    for i in range(100, 175):  # in the journal and in memory, never applied
        writer.append(rec(i))
    # "kill -9": the thread stops without draining, the lock is let go, memory is lost.
    applier.handoff.clear()
    applier._run_future.cancel()
    loop, applier._loop = applier._loop, None
    loop.call_soon_threadsafe(loop.stop)
    applier._thread.join(5)
    writer.close()
    os.close(writer._lock_fd)
    writer._lock_fd = None
    assert await _count(engine) == (100, sum(100 + i for i in range(100)))

    w2 = JournalWriter(folder, fsync="never")
    w2.open()
    second = Applier(engine, folder, w2, batch=40, interval=3600)
    assert await second.replay_orphans() == 75
    assert await _count(engine) == (175, sum(100 + i for i in range(175)))
    assert await second.stop()
    w2.close()
    w2.release()


def _scrape(srv) -> dict[str, float]:
    r = httpx.get(srv.base_url + "/metrics", headers={"authorization": f"Bearer {srv.admin_key}"})
    assert r.status_code == 200, r.text
    return {s.name: s.value for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def test_lag_gauges(gateway):
    srv = gateway(KEYPLANE_USAGE_APPLY_SECONDS="3600")
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    drain(srv)
    assert _scrape(srv)["keyplane_usage_journal_lag_seconds"] == 0.0
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    time.sleep(0.2)
    m = _scrape(srv)
    assert m["keyplane_usage_journal_lag_records"] == 1 and m["keyplane_usage_journal_lag_seconds"] >= 0.2
    drain(srv)
    m = _scrape(srv)
    assert m["keyplane_usage_journal_lag_records"] == 0 and m["keyplane_usage_journal_lag_seconds"] == 0.0

    async def block() -> None:
        time.sleep(0.7)  # blocks the serving loop: the probe's timer fires late

    srv.call(block())
    deadline = time.monotonic() + 3
    worst = 0.0
    while time.monotonic() < deadline and worst < 0.4:
        worst = max(worst, _scrape(srv)["keyplane_event_loop_lag_seconds"])
        time.sleep(0.1)
    assert 0.4 <= worst < 5


async def test_handoff_is_bounded_and_the_journal_is_read_back(engine, tmp_path):
    """Too many records waiting (the store down): the writer drops the in-memory handoff, the applier
    then reads the journal back from its committed position: nothing lost, nothing applied twice."""
    folder = tmp_path / "journal"
    writer = JournalWriter(folder, fsync="never")
    writer.open()
    applier = Applier(engine, folder, writer, batch=8, interval=3600)
    writer.handoff_max = 10
    for i in range(5):
        writer.append(rec(i))
    await applier.apply_pending()  # from memory
    for i in range(5, 30):
        writer.append(rec(i))
    assert writer.handoff is None and len(applier.handoff) == 10
    time.sleep(0.02)
    assert applier.lag == 25 and applier.lag_seconds >= 0.02
    assert await applier.apply_pending() == 25
    assert applier.handoff is None and applier.lag == 0 and applier.lag_seconds == 0.0
    assert await _count(engine) == (30, sum(100 + i for i in range(30)))
    writer.append(rec(30))
    assert await applier.apply_pending() == 1
    assert await applier.stop()
    assert await _count(engine) == (31, sum(100 + i for i in range(31)))
    writer.close()
    writer.release()


async def test_a_clean_stop_replays_a_dead_writers_journal(engine, database_url, tmp_path):
    """A dead writer's journal that appears after the start replay (or that the start replay could not apply:
    the store was away) is applied and removed by a clean stop, not left for the next start."""
    url = database_url_for(database_url, tmp_path)
    folder = tmp_path / "journal"
    writer = JournalWriter(folder, fsync="never")
    writer.open()
    applier = Applier(engine, folder, writer, batch=40, interval=3600)  # its next orphan scan: an hour away
    applier.start(thread_engine(url))
    dead = JournalWriter(folder, fsync="never")  # another process's journal, which then dies
    dead.open()
    for i in range(30):
        dead.append(rec(i))
    dead.close()
    os.close(dead._lock_fd)
    dead._lock_fd = None
    assert await _count(engine) == (0, 0)
    assert await applier.stop()
    assert await _count(engine) == (30, sum(100 + i for i in range(30)))
    assert not [p for p in folder.iterdir() if p.name.startswith(dead.writer)]
    writer.close()
    writer.release()


async def test_applied_rows_are_the_records_exactly(engine):
    """Every column of usage_requests and the rollups, as the records say (rows travel as arrays: JSON on
    SQLite, one array per column on PostgreSQL): booleans, NULLs, floats, quotes and non-ASCII included."""
    from keyplane.usage.applier import apply_records
    from keyplane.usage.models import UsageRequest
    from keyplane.usage.rollups import REQUEST_COLUMNS, request_row, rollup_rows

    assert sorted(REQUEST_COLUMNS) == sorted(c.name for c in UsageRequest.__table__.columns if c.name != "seq")
    odd = Record(
        "req_odd",
        1_800_000_061.75,
        None,
        "proj_2",
        None,
        None,
        'gpt-"4o"\u00e9',
        None,
        "embeddings",
        "/v1/embeddings?q='x'",
        429,
        0,
        0,
        0,
        0,
        0,
        0.125,
        None,
        stream=True,
        disconnected=True,
        estimated=True,
        attempts=3,
        error="rate_limit_exceeded \u2603",
        upstream_request_id="up_1",
    )
    records = [rec(i) for i in range(5)] + [odd, msgspec.structs.replace(odd, id="req_odd2", units=7)]
    assert await apply_records(engine, records) == 7
    assert await apply_records(engine, records) == 0  # replayed: nothing new, rollups unchanged
    cols = ", ".join(REQUEST_COLUMNS)
    async with engine.connect() as conn:
        got = {
            r[0]: dict(zip(REQUEST_COLUMNS, r, strict=True))
            for r in await conn.execute(text(f"SELECT {cols} FROM usage_requests"))
        }
        minute = {
            tuple(r[:6]): r[6:]
            for r in await conn.execute(
                text(
                    "SELECT bucket, project_id, api_key_id, user_id, model, kind, requests, errors, input_tokens, "
                    "cost_micros, units, latency_ms_sum FROM usage_minute"
                )
            )
        }
        day = (await conn.execute(text("SELECT sum(requests), sum(cost_micros), sum(units) FROM usage_day"))).one()
    for r in records:
        want = request_row(r)
        row = got[r.id]
        for c in ("stream", "disconnected", "estimated"):
            row[c] = bool(row[c])
        assert row == want, r.id
    expected = {
        (x["bucket"], x["project_id"], x["api_key_id"], x["user_id"], x["model"], x["kind"]): (
            x["requests"],
            x["errors"],
            x["input_tokens"],
            x["cost_micros"],
            x["units"],
            x["latency_ms_sum"],
        )
        for x in rollup_rows(records, 60)
    }
    assert {k: tuple(v) for k, v in minute.items()} == expected
    assert tuple(day) == (7, sum(r.cost_micros for r in records), 7)


def test_hour_and_day_rollups_from_minutes_equal_summing_the_records():
    import random

    from keyplane.usage.rollups import rollup_rows, rollups_of

    rnd = random.Random(7)
    records = [
        Record(
            f"r{i}",
            1_800_000_000.0 + rnd.randrange(0, 3 * 86400),
            "org",
            rnd.choice(["p1", "p2"]),
            rnd.choice(["k1", "k2", None]),
            None,
            rnd.choice(["m1", "m2"]),
            "up",
            "completions",
            "/v1/x",
            rnd.choice([200, 500]),
            rnd.randrange(100),
            0,
            rnd.randrange(50),
            rnd.randrange(1000),
            0,
            rnd.random() * 100,
        )
        for i in range(3000)
    ]
    got = rollups_of(records)
    for g in (60, 3600, 86400):
        want = rollup_rows(records, g)
        assert [{**x, "latency_ms_sum": round(x["latency_ms_sum"], 6)} for x in got[g]] == [
            {**x, "latency_ms_sum": round(x["latency_ms_sum"], 6)} for x in want
        ]


def test_a_served_store_is_applied_on_the_applier_thread_with_no_driver_thread_on_sqlite(gateway):
    """keyplane as served: on a SQLite file the applier's thread applies on a blocking connection of its own (no
    aiosqlite thread: each statement through it was two hand-offs between threads, each a wait for the GIL behind
    the serving thread); on PostgreSQL on an async engine of its own. Either way the ledger step runs in the same
    transaction, on that thread, and the request's cost reaches spend_ledger."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    srv = gateway()
    rt = srv.app.runtime
    applier = rt.features.usage_applier
    assert applier is not None and applier._thread is not None
    sqlite = rt.engine.url.get_backend_name() == "sqlite"
    assert isinstance(applier._apply_engine, Engine if sqlite else AsyncEngine)
    ran: list[int] = []
    ledger = rt.features.billing.ledger if rt.features.billing is not None else None
    assert ledger is not None
    step = ledger.apply

    def watched(conn, records):
        ran.append(threading.get_ident())
        step(conn, records)

    steps = APPLY_STEPS[rt.engine]
    steps[steps.index(step)] = watched
    try:
        client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        drain(srv)
    finally:
        steps[steps.index(watched)] = step
    assert ran and set(ran) == {applier._thread.ident}

    async def spent() -> int:
        async with rt.engine.connect() as conn:
            q = text("SELECT coalesce(sum(micros), 0) FROM spend_ledger WHERE scope = 'project' AND scope_id = :p")
            return int((await conn.execute(q, {"p": srv.project_id})).scalar_one())

    assert srv.call(spent()) > 0


async def test_a_partly_stored_batch_adds_only_its_new_rows(engine, database_url, tmp_path):
    """A batch that holds records stored already (a replay) adds only the others, to the rows, the rollups and the
    apply steps, on the applier thread's engine and through an async caller alike; across the statements a batch
    is inserted in (a chunk's stored ids and new ones counted together)."""
    from keyplane.usage.apply_sql import _REQUEST_CHUNK, apply_blocking, apply_records

    size = 341
    assert _REQUEST_CHUNK < size < 2 * _REQUEST_CHUNK  # two statements, the second one partial
    records = [rec(i) for i in range(size)]
    stepped: list[str] = []
    APPLY_STEPS.setdefault(engine, []).append(lambda conn, new: stepped.extend(r.id for r in new))
    try:
        assert await apply_records(engine, records[::3]) == len(records[::3])  # every third one stored already
        blocking = thread_engine(database_url_for(database_url, tmp_path))()
        try:
            if isinstance(blocking, Engine):  # SQLite: the applier thread's blocking engine
                assert apply_blocking(blocking, records, engine) == size - len(records[::3])
            else:
                assert await apply_records(blocking, records, engine) == size - len(records[::3])
            # Applied whole again: nothing is new.
            assert await apply_records(engine, list(reversed(records))) == 0
        finally:
            await _dispose(blocking)
    finally:
        APPLY_STEPS[engine].pop()
    assert sorted(stepped) == sorted(r.id for r in records)  # each record stepped once
    assert await _count(engine) == (size, sum(100 + i for i in range(size)))
    async with engine.connect() as conn:
        day = (await conn.execute(text("SELECT sum(requests), sum(cost_micros) FROM usage_day"))).one()
    assert tuple(day) == (size, sum(100 + i for i in range(size)))
