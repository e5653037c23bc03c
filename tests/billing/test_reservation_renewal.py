"""Reservations of requests still running are renewed until they are settled (billing/renewal.py
Renewal.renew, the limiters' ``renew``); those of a process that stopped renewing lapse at their TTL.

The in-process limiter runs on an injected clock; the Redis one on Redis TIME (its scores are read, and one test
polls Redis TIME until a short TTL has passed, as tests/limits does).
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from keyplane.clock import FakeClock
from keyplane.limits import BudgetRef, Denied, Granted, Reservation
from keyplane.limits.memory import MemoryLimiter
from keyplane.limits.redis_backend import STORE_ERRORS, RedisLimiter
from keyplane.testing import Behaviour
from tests.billing.conftest import REDIS_URL, billing_of, clean_redis, unique_prefix
from tests.support import until_redis_time_passes

BUDGETS = (BudgetRef("2026-01:project:p", 100, 3600), BudgetRef("all:credit:o", None, 0))
KEY = "2026-01:project:p"
SECOND = 1_000_000


def _res(rid: str, amount: int) -> Reservation:
    return Reservation(rid, amount, 0, BUDGETS, ())


# --- the in-process limiter, on an injected clock -------------------------------------------------------------


async def test_memory_renew_extends_a_held_reservation_to_now_plus_ttl():
    clock = FakeClock(1_800_000_000.0)
    lim = MemoryLimiter(clock.now, 30)
    assert isinstance(lim.admit_now("run", BUDGETS, (), 60, 0), Granted)
    clock.advance(20)
    assert await lim.renew([_res("run", 60)], 30 * SECOND) == 1
    assert lim.reservations["run"][0] == lim.now_us() + 30 * SECOND
    clock.advance(20)  # 40 s after admission, 10 s before the renewed expiry
    assert await lim.sweep() == 0
    assert isinstance(lim.admit_now("next", BUDGETS, (), 60, 0), Denied)  # still held: 60 + 60 > 100
    clock.advance(11)  # not renewed again (its process stopped): it lapses at its TTL
    assert await lim.sweep() == 1
    assert (await lim.spent([KEY]))[KEY] == (0, 0)


async def test_memory_renew_never_takes_a_settled_or_lapsed_one_again_nor_shortens_a_longer_one():
    clock = FakeClock(1_800_000_000.0)
    lim = MemoryLimiter(clock.now, 30)
    lim.admit_now("done", BUDGETS, (), 10, 0)
    lim.admit_now("lapsed", BUDGETS, (), 10, 0, ttl_us=5 * SECOND)
    lim.admit_now("batch", BUDGETS, (), 10, 0, ttl_us=3600 * SECOND)
    lim.settle_now(_res("done", 10), 7, 0)
    clock.advance(6)
    assert await lim.sweep() == 1  # "lapsed"
    assert await lim.renew([_res("done", 10), _res("lapsed", 10), _res("batch", 10)], 30 * SECOND) == 1
    assert set(lim.reservations) == {"batch"}
    assert lim.reservations["batch"][0] == lim.now_us() - 6 * SECOND + 3600 * SECOND  # not shortened
    assert (await lim.spent([KEY]))[KEY] == (7, 10)


# --- the Redis limiter ------------------------------------------------------------------------------------------


@pytest.fixture
async def redis_pair():
    """Two limiters on one prefix: two processes of a fleet."""
    prefix = unique_prefix()
    a, b = RedisLimiter(REDIS_URL, prefix, 30), RedisLimiter(REDIS_URL, prefix, 30)
    await a.seed({}, {})
    yield a, b
    await a.close()
    await b.close()
    await asyncio.to_thread(clean_redis, prefix)


async def _score(lim: RedisLimiter, budget: str, member: str) -> int | None:
    s = await lim.redis.zscore(lim._z(budget), member)
    return None if s is None else int(s)


async def _redis_now(lim: RedisLimiter) -> int:
    sec, us = await lim.redis.time()
    return int(sec) * SECOND + int(us)


@pytest.mark.redis
async def test_redis_renew_extends_every_budget_of_a_held_reservation(redis_pair):
    lim, _ = redis_pair
    assert isinstance(await lim.admit("run", BUDGETS, (), 60, 0), Granted)
    before = await _redis_now(lim)
    assert await lim.renew([_res("run", 60)], 3600 * SECOND) == 1  # one script call
    after = await _redis_now(lim)
    for b in BUDGETS:
        score = await _score(lim, b.key, "run:60")
        assert score is not None and before + 3600 * SECOND <= score <= after + 3600 * SECOND
    assert (await lim.spent([KEY]))[KEY] == (0, 60)  # renewing takes nothing more


@pytest.mark.redis
async def test_redis_renew_never_takes_a_settled_one_again_nor_shortens_a_longer_one(redis_pair):
    lim, _ = redis_pair
    await lim.admit("done", BUDGETS, (), 10, 0)
    await lim.admit("batch", BUDGETS, (), 10, 0, ttl_us=86_400 * SECOND)
    await lim.settle(_res("done", 10), 7, 0)
    long = await _score(lim, KEY, "batch:10")
    assert await lim.renew([_res("done", 10), _res("batch", 10), _res("free", 0)], 30 * SECOND) == 1
    assert await _score(lim, KEY, "done:10") is None  # not added again
    assert await _score(lim, KEY, "batch:10") == long  # not shortened
    assert (await lim.spent([KEY]))[KEY] == (7, 10)


@pytest.mark.redis
async def test_redis_reservations_of_a_dead_process_lapse_while_the_live_ones_are_held(redis_pair):
    """Process A admits and dies (its renewals stop); process B renews its own: at A's TTL the next admission drops
    A's reservation, B's is still held."""
    a, b = redis_pair
    assert isinstance(await a.admit("dead", BUDGETS, (), 40, 0, ttl_us=300_000), Granted)
    assert isinstance(await b.admit("live", BUDGETS, (), 40, 0, ttl_us=300_000), Granted)
    assert await b.renew([_res("live", 40)], 30 * SECOND) == 1
    dead_until = await _score(b, KEY, "dead:40")
    assert dead_until is not None
    await until_redis_time_passes(b.redis, dead_until)  # Redis TIME past both admissions' TTL (300 ms)
    assert isinstance(await b.admit("next", BUDGETS, (), 60, 0), Granted)  # 40 (live) + 60: A's 40 dropped
    assert await _score(b, KEY, "dead:40") is None
    assert await _score(b, KEY, "live:40") is not None
    assert (await b.spent([KEY]))[KEY] == (0, 100)


@pytest.mark.redis
async def test_redis_renew_in_batches_of_script_calls(redis_pair, monkeypatch):
    from keyplane.limits import redis_backend

    lim, _ = redis_pair
    monkeypatch.setattr(redis_backend, "RENEW_BATCH", 3)
    many = [_res(f"r{i}", 1) for i in range(10)]
    for r in many:
        assert isinstance(await lim.admit(r.rid, BUDGETS, (), 1, 0), Granted)
    calls = 0
    run = lim._renew

    async def counted(**kw):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return await run(**kw)

    lim._renew = counted
    assert await lim.renew(many, 3600 * SECOND) == 10
    assert calls == 4
    now = await _redis_now(lim)
    scores = [await _score(lim, KEY, f"{r.rid}:1") for r in many]
    assert all((s or 0) > now + 3000 * SECOND for s in scores)


@pytest.mark.redis
async def test_redis_down_renew_raises_a_store_error():
    lim = RedisLimiter("redis://127.0.0.1:1/0", "kptest-down", 30, timeout=0.2)
    try:
        with pytest.raises(STORE_ERRORS):
            await lim.renew([_res("run", 10)], 30 * SECOND)
    finally:
        await lim.close()


# --- the gateway: admitted -> renewed -> settled ----------------------------------------------------------------

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "stream": True}
WORDS = " ".join(f"w{i}" for i in range(20))


def _reserved(srv) -> int:  # type: ignore[no-untyped-def]
    return srv.call(billing_of(srv).spent("project", srv.project_id))[1]


def _renewed_while_it_runs(srv, clock: FakeClock | None) -> None:  # type: ignore[no-untyped-def]
    b = billing_of(srv)
    (rid, res), *more = list(b.renewal.in_flight.items())  # added at admission
    assert not more and res.amount == _reserved(srv) > 0
    if clock is not None:  # in process: the clock moves past the admission's TTL, the reservation stays
        clock.advance(20)
        assert srv.call(b.renewal.renew()) == 1
        clock.advance(20)
        assert srv.call(b.limiter.sweep()) == 0
    else:  # Redis: its expiry moved to Redis TIME + TTL (here an hour, to tell it from the admission's)
        b.renewal.ttl_us = 3600 * SECOND
        assert srv.call(b.renewal.renew()) == 1
        score = srv.call(b.limiter.redis.zscore(b.limiter._z(res.budgets[0].key), f"{rid}:{res.amount}"))
        assert score > srv.call(_redis_now(b.limiter)) + 3500 * SECOND
    assert _reserved(srv) == res.amount


def test_a_running_request_is_renewed_until_it_is_settled(make_gateway, fake, backend):
    clock = None if backend else FakeClock(1_800_000_000.0)
    srv = make_gateway(clock=clock, KEYPLANE_RESERVATION_TTL_SECONDS="30")
    b = billing_of(srv)
    assert b.renewal.periodic.interval == 10  # min(TTL / 3, 60 s)
    fake.push(Behaviour(chunk_delay=0.2, text=WORDS))  # a stream of ~4 s; this test reads its first word only
    with (
        httpx.Client(timeout=10) as c,
        c.stream(
            "POST", srv.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {srv.api_key}"}
        ) as r,
    ):
        for line in r.iter_lines():
            if '"content"' in line:  # the stream runs (leaving the loop closes it: the client goes away)
                _renewed_while_it_runs(srv, clock)
                break
    # the client went away: the request is settled, no longer renewed, its reservation released
    deadline = time.monotonic() + 5
    while (b.renewal.in_flight or _reserved(srv)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.renewal.in_flight == {} and _reserved(srv) == 0
    assert srv.call(b.renewal.renew()) == 0
    m = srv.app.runtime.features.usage_metrics
    assert m.registry.get_sample_value("keyplane_reservation_renewals_total") == 1


def test_a_request_ended_without_settle_is_no_longer_renewed_and_lapses(make_gateway, backend):
    """A bug that ends a request's task without settling it must not hold its budget for the process's life."""
    clock = None if backend else FakeClock(1_800_000_000.0)
    srv = make_gateway(clock=clock, KEYPLANE_RESERVATION_TTL_SECONDS="30")
    b = billing_of(srv)
    key = f"{b.period}:project:{srv.project_id}"
    budgets = (BudgetRef(key, None, 3600),)
    b.renewal.ttl_us = 3600 * SECOND  # a renewal would show (Redis: its score an hour ahead)

    async def admit_in_a_task() -> None:
        async def request() -> None:
            assert isinstance(await b.limiter.admit("ghost", budgets, (), 500, 0), Granted)
            b.renewal.in_flight["ghost"] = Reservation("ghost", 500, 0, budgets, (), {"task": asyncio.current_task()})
            # ...and the task ends, never settled

        await asyncio.get_running_loop().create_task(request())

    srv.call(admit_in_a_task())
    assert srv.call(b.renewal.renew()) == 0
    assert "ghost" not in b.renewal.in_flight
    if clock is not None:  # its TTL (30 s) passes: swept
        clock.advance(31)
        assert srv.call(b.limiter.sweep()) == 1
        assert srv.call(b.limiter.spent([key]))[key] == (0, 0)
    else:  # still at the admission's expiry, which the next admission after it drops
        score = srv.call(b.limiter.redis.zscore(b.limiter._z(key), "ghost:500"))
        assert score < srv.call(_redis_now(b.limiter)) + 31 * SECOND


def test_renewal_failures_are_logged_and_survived(make_gateway, caplog):
    srv = make_gateway(KEYPLANE_RESERVATION_TTL_SECONDS="30")
    b = billing_of(srv)
    real = b.limiter
    broken = RedisLimiter("redis://127.0.0.1:1/0", "kptest-down", 30, timeout=0.2)
    b.renewal.in_flight["r1"] = _res("r1", 10)
    b.renewal.limiter = broken  # Redis down
    try:
        with caplog.at_level(logging.WARNING, logger="keyplane"):
            assert srv.call(b.renewal.periodic.run_once()) is False  # the periodic step: logged, not raised
        assert any("reservation renewal failed" in r.getMessage() for r in caplog.records)
    finally:
        b.renewal.limiter = real
        srv.call(broken.close())
        b.renewal.in_flight.pop("r1", None)
    assert srv.call(b.renewal.periodic.run_once()) is True  # and it works again when the store answers


def test_the_renewal_task_runs_while_billing_runs(make_gateway):
    srv = make_gateway(KEYPLANE_RESERVATION_TTL_SECONDS="900")
    b = billing_of(srv)
    assert b.renewal.periodic.interval == 60 and b.renewal.periodic.running  # min(900 / 3, 60 s)


def test_a_finished_request_leaves_nothing_to_renew(gw):
    """A request that completes leaves nothing to renew (added at admission, removed at settle)."""
    b = billing_of(gw)
    r = httpx.post(
        gw.v1 + "/chat/completions",
        json={**CHAT, "stream": False},
        headers={"Authorization": f"Bearer {gw.api_key}"},
        timeout=10,
    )
    assert r.status_code == 200
    assert b.renewal.in_flight == {}
