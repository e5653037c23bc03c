"""kill -9 with 500 requests in flight: after a restart every answered request has exactly one record.

keyplane runs as a real process (python -m uvicorn keyplane.cli:app_from_env --factory); the fake
upstream runs in the test process and records what it answered. The applier is set to wait 30 s, so
at the kill every record is only in the journal: the restart must replay them all. Half the
requests are held by the upstream (a long latency, or a slow stream) and are in flight when the
process dies: they were never answered, and must leave no record.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import func, select

from keyplane.config import database_url_for
from keyplane.store import db
from keyplane.usage.models import UsageDay, UsageHour, UsageMinute, UsageRequest
from tests.support import init_org, make_settings
from tests.usage.support import Proc, fake_config

pytestmark = pytest.mark.slow

N_FAST = 250
N_HELD = 250


async def _fire(
    base: str, key: str, kill: Callable[[], None], upstream_holds: Callable[[], int]
) -> tuple[set[str], int]:
    """Start the held requests, and once the upstream holds them all (``upstream_holds()``) the fast ones;
    once all fast ones are answered, ``kill`` the server (with the held ones still in flight: the client
    keeps their connections open). Returns the fast ones' request ids and how many held ones were still in
    flight at the kill."""
    h = {"authorization": f"Bearer {key}"}
    rnd = random.Random(5)
    limits = httpx.Limits(max_connections=N_FAST + N_HELD + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:

        async def held(i: int) -> None:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"held {i}"}]}
            if i % 2:
                body["stream"] = True
                hh = {**h, "x-fake-chunk-delay-ms": "2000", "x-fake-text": " ".join(["slow"] * 50)}
            else:
                hh = {**h, "x-fake-latency-ms": "120000"}
            try:
                async with c.stream("POST", "/v1/chat/completions", json=body, headers=hh) as r:
                    async for _ in r.aiter_bytes():
                        pass
            except httpx.HTTPError:
                pass  # the server was killed under it

        async def fast(i: int) -> str:
            lat = str(rnd.randint(0, 400))
            kind = i % 3
            hh = {**h, "x-fake-latency-ms": lat}
            if kind == 0:
                r = await c.post(
                    "/v1/chat/completions",
                    headers=hh,
                    json={
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": f"fast {i} " * (1 + i % 7)}],
                    },
                )
                assert r.status_code == 200, r.text
                return r.headers["x-keyplane-request-id"]
            if kind == 1:
                body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": f"s {i}"}]}
                async with c.stream("POST", "/v1/chat/completions", json=body, headers=hh) as r:
                    assert r.status_code == 200
                    data = b"".join([x async for x in r.aiter_bytes()])
                    assert data.rstrip().endswith(b"data: [DONE]")
                    return r.headers["x-keyplane-request-id"]
            r = await c.post(
                "/v1/embeddings", headers=hh, json={"model": "text-embedding-3-small", "input": f"embed {i}"}
            )
            assert r.status_code == 200, r.text
            return r.headers["x-keyplane-request-id"]

        held_tasks = [asyncio.create_task(held(i)) for i in range(N_HELD)]
        deadline = asyncio.get_running_loop().time() + 30
        while upstream_holds() < N_HELD:  # every held request reached the upstream: in flight at the kill
            assert asyncio.get_running_loop().time() < deadline, f"{upstream_holds()} of {N_HELD} held requests"
            await asyncio.sleep(0.02)  # poll interval (a deadline loop)
        ids = await asyncio.gather(*(fast(i) for i in range(N_FAST)))
        in_flight = sum(1 for t in held_tasks if not t.done())
        kill()  # before the client closes anything: the held requests die with the server
        await asyncio.gather(*held_tasks)
        return set(ids), in_flight


async def _db_state(url: str) -> dict:
    engine = db.make_engine(url)
    try:
        async with engine.connect() as conn:
            ids = set((await conn.execute(select(UsageRequest.id))).scalars())
            raw = (
                await conn.execute(
                    select(func.count(), func.sum(UsageRequest.input_tokens), func.sum(UsageRequest.output_tokens))
                )
            ).one()
            rolls = {}
            for t in (UsageMinute, UsageHour, UsageDay):
                r = (
                    await conn.execute(
                        select(func.sum(t.requests), func.sum(t.input_tokens), func.sum(t.output_tokens))
                    )
                ).one()
                rolls[t.__tablename__] = tuple(int(x or 0) for x in r)
        return {"ids": ids, "raw": tuple(int(x or 0) for x in raw), "rollups": rolls}
    finally:
        await engine.dispose()


def _wait_rows(url: str, n: int, timeout: float = 60) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while True:
        state = asyncio.run(_db_state(url))
        if len(state["ids"]) >= n or time.monotonic() > deadline:
            return state
        time.sleep(0.2)  # poll interval (a deadline loop)


def test_kill9_with_requests_in_flight_loses_nothing_and_counts_nothing_twice(tmp_path, database_url, fake):
    fake.reset()
    home = tmp_path / "home"
    settings = make_settings(home, database_url, config_text=fake_config(fake))
    init = init_org(settings)
    url = database_url_for(database_url, home)
    env = {
        "KEYPLANE_DATABASE_URL": database_url,
        "KEYPLANE_USAGE_APPLY_SECONDS": "30",
        "KEYPLANE_LOG_REQUESTS": "false",
        "KEYPLANE_USAGE_JOURNAL_FSYNC": "interval",
    }
    journal = home / "journal"

    a = Proc(home, env)
    a.wait_ready()

    def held() -> int:  # a copy (atomic): the upstream's thread records requests meanwhile
        return sum(1 for r in fake.requests.copy() if not r.finished and not r.path.startswith("/_fake"))

    answered_ids, in_flight = asyncio.run(_fire(a.base_url, init["api_key"], a.kill9, held))
    assert len(answered_ids) == N_FAST and in_flight == N_HELD
    answered_upstream = [r for r in fake.model_requests() if r.finished]
    assert len(answered_upstream) == N_FAST  # the upstream answered exactly the fast ones
    assert asyncio.run(_db_state(url))["ids"] == set()  # nothing applied before the kill: all in the journal
    assert any(p.suffix == ".seg" and p.stat().st_size > 0 for p in journal.iterdir())
    saved = tmp_path / "journal-at-kill"
    shutil.copytree(journal, saved)

    b = Proc(home, env)  # replays the dead process's journal at start
    b.wait_ready()
    state = _wait_rows(url, N_FAST)
    assert state["ids"] == answered_ids  # every answered request exactly once; the unanswered ones absent
    assert state["raw"][0] == N_FAST == len(answered_upstream)
    for table, sums in state["rollups"].items():
        assert sums == state["raw"], table  # rollups agree with the records: nothing counted twice
    assert b.terminate()  # SIGTERM: drains and exits cleanly
    assert not [p for p in journal.iterdir() if p.suffix == ".seg"]

    # A crash between the SQL commit and the journal clean-up: the same journal comes back.
    for p in saved.iterdir():
        shutil.copy2(p, journal / p.name)
    c = Proc(home, env)
    c.wait_ready()
    assert c.terminate()
    again = asyncio.run(_db_state(url))
    assert again == state
    assert not [p for p in journal.iterdir() if p.suffix == ".seg"]
