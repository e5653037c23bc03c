"""Both limiters against the same cases: all-or-nothing admission, refusal order, settle, TTL.

The Redis one runs its Lua scripts on the machine's Redis (Redis TIME as the clock); the in-process
one on an injected clock.
"""

from __future__ import annotations

import asyncio

import pytest

from keyplane.clock import FakeClock
from keyplane.limits import Bucket, BudgetRef, Denied, Granted, Reservation, Unseeded
from keyplane.limits.memory import MemoryLimiter
from keyplane.limits.redis_backend import RedisLimiter
from tests.limits.conftest import REDIS_URL
from tests.support import until_redis_time_passes

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def limiter(request, redis_prefix):
    if request.param == "memory":
        lim = MemoryLimiter(FakeClock().now, 60)
    else:
        lim = RedisLimiter(REDIS_URL, redis_prefix, 60)
        await lim.seed({}, {})
    yield lim
    await lim.close()


def _budgets(limit_a: int | None, limit_b: int | None) -> tuple[BudgetRef, ...]:
    return (BudgetRef("2026-01:project:p", limit_a, 3600), BudgetRef("all:credit:o", limit_b, 0))


async def test_all_or_nothing(limiter):
    budgets = _budgets(100, 50)
    g = await limiter.admit("r1", budgets, (), 40, 0)
    assert isinstance(g, Granted)
    d = await limiter.admit("r2", budgets, (), 20, 0)  # fits the project, not the credit
    assert isinstance(d, Denied) and d.kind == "budget" and d.index == 1 and d.reserved == 40
    got = await limiter.spent(["2026-01:project:p", "all:credit:o"])
    assert got == {"2026-01:project:p": (0, 40), "all:credit:o": (0, 40)}  # nothing taken by the refusal
    await limiter.settle(Reservation("r1", 40, 0, budgets, ()), 30, 0)
    got = await limiter.spent(["2026-01:project:p", "all:credit:o"])
    assert got == {"2026-01:project:p": (30, 0), "all:credit:o": (30, 0)}
    assert isinstance(await limiter.admit("r3", budgets, (), 20, 0), Granted)


async def test_concurrent_admissions_never_pass_the_limit(limiter):
    budgets = (BudgetRef("2026-01:api_key:k", 1000, 3600),)
    results = await asyncio.gather(*[limiter.admit(f"r{i}", budgets, (), 7, 0) for i in range(300)])
    assert sum(isinstance(r, Granted) for r in results) == 1000 // 7


async def test_rate_limits_and_refusal_order(limiter):
    bucket = Bucket("p:proj:m", (3, 100, 0, 0))
    for i in range(3):
        g = await limiter.admit(f"r{i}", (), (bucket,), 0, 10)
        assert isinstance(g, Granted)
    d = await limiter.admit("r4", (), (bucket,), 0, 10)
    assert d.kind == "rate" and d.limit_index == 0 and d.used == 3 and 19_000_000 < d.wait_us <= 20_000_000
    big = await limiter.admit("r5", (), (bucket,), 0, 101)
    assert big.kind == "too_large" and big.limit_index == 1 and big.used == 101
    # a budget refusal comes before a rate refusal (waiting does not help)
    d = await limiter.admit("r6", (BudgetRef("2026-01:project:x", 0, 60),), (bucket,), 5, 10)
    assert d.kind == "budget"


async def test_longest_wait_is_reported(limiter):
    fast = Bucket("p:a:m", (1000, 60, 0, 0))  # tokens: 1 per second
    await limiter.admit("r1", (), (fast,), 0, 60)
    d = await limiter.admit("r2", (), (fast,), 0, 30)
    assert d.kind == "rate" and d.limit_index == 1 and 29_000_000 < d.wait_us <= 30_000_000


async def test_settle_corrects_token_buckets(limiter):
    bucket = Bucket("p:p:m", (0, 100, 0, 0))
    g = await limiter.admit("r1", (), (bucket,), 0, 90)
    assert isinstance(g, Granted)
    assert not isinstance(await limiter.admit("r2", (), (bucket,), 0, 20), Granted)
    await limiter.settle(Reservation("r1", 0, 90, (), (bucket,)), 0, 10)  # used 10 of the 90 estimated
    assert isinstance(await limiter.admit("r3", (), (bucket,), 0, 80), Granted)


async def test_memory_reservations_expire():
    clock = FakeClock()
    lim = MemoryLimiter(clock.now, 30)
    budgets = (BudgetRef("2026-01:project:p", 100, 3600),)
    assert isinstance(lim.admit_now("crashed", budgets, (), 100, 0), Granted)
    assert isinstance(lim.admit_now("r2", budgets, (), 1, 0), Denied)
    clock.advance(31)
    assert await lim.sweep() == 1
    assert isinstance(lim.admit_now("r3", budgets, (), 100, 0), Granted)
    # a late settle of the expired one still counts its actual cost, without releasing twice
    lim.settle_now(Reservation("crashed", 100, 0, budgets, ()), 5, 0)
    assert (await lim.spent(["2026-01:project:p"]))["2026-01:project:p"] == (5, 100)


@pytest.mark.redis
async def test_redis_reservations_expire(redis_prefix):
    lim = RedisLimiter(REDIS_URL, redis_prefix, 0.3)
    await lim.seed({}, {})
    budgets = (BudgetRef("2026-01:project:p", 100, 3600),)
    assert isinstance(await lim.admit("crashed", budgets, (), 100, 0), Granted)
    assert isinstance(await lim.admit("r2", budgets, (), 1, 0), Denied)
    # Redis TIME (the scripts' clock, which no test can inject) moves on its own: polled until it is past the
    # dead reservation's expiry (300 ms), the next admission drops it
    expires = await lim.redis.zscore(lim._z("2026-01:project:p"), "crashed:100")
    assert expires is not None
    await until_redis_time_passes(lim.redis, int(expires))
    assert isinstance(await lim.admit("r3", budgets, (), 100, 0), Granted)
    await lim.close()


@pytest.mark.redis
async def test_redis_unseeded_and_seed_once(redis_prefix):
    lim = RedisLimiter(REDIS_URL, redis_prefix, 60)
    budgets = (BudgetRef("2026-01:project:p", 100, 3600),)
    with pytest.raises(Unseeded):
        await lim.admit("r1", budgets, (), 1, 0)
    await lim.seed({"2026-01:project:p": 70}, {"2026-01:project:p": 3600})
    await lim.seed({"2026-01:project:p": 70}, {"2026-01:project:p": 3600})  # a second instance: no double count
    assert (await lim.spent(["2026-01:project:p"]))["2026-01:project:p"] == (70, 0)
    assert isinstance(await lim.admit("r1", budgets, (), 31, 0), Denied)
    assert isinstance(await lim.admit("r1", budgets, (), 30, 0), Granted)
    await lim.close()


async def test_hold_restores_a_reservation_once_whatever_the_limits(limiter):
    budgets = (BudgetRef("2026-01:project:p", 100, 3600),)
    assert isinstance(await limiter.admit("r1", budgets, (), 90, 0), Granted)
    res = Reservation("batch-1", 50, 0, budgets, ())
    assert await limiter.hold(res, 60_000_000)  # past the limit: held all the same (the batch runs)
    assert not await limiter.hold(res, 60_000_000)  # held already: not twice
    assert (await limiter.spent(["2026-01:project:p"]))["2026-01:project:p"] == (0, 140)
    await limiter.settle(res, 30, 0)
    assert (await limiter.spent(["2026-01:project:p"]))["2026-01:project:p"] == (30, 90)


async def test_release_frees_a_reservation_once_and_spends_nothing(limiter):
    """Limiter.release (admission's undo of a call that failed before it knew the answer), on both limiters."""
    budgets = (BudgetRef("2026-01:project:p", 100, 3600),)
    assert isinstance(await limiter.admit("r1", budgets, (), 90, 0), Granted)
    assert isinstance(await limiter.admit("r2", budgets, (), 20, 0), Denied)
    res = Reservation("r1", 90, 0, budgets, ())
    await limiter.release(res)
    await limiter.release(res)  # idempotent: nothing freed twice
    assert (await limiter.spent(["2026-01:project:p"]))["2026-01:project:p"] == (0, 0)
    assert isinstance(await limiter.admit("r3", budgets, (), 90, 0), Granted)
    assert (await limiter.spent(["2026-01:project:p"]))["2026-01:project:p"] == (0, 90)


async def test_top_up_adds_once_per_marker(limiter):
    """Limiter.top_up (an instance's unapplied usage after another rebuilt the counters), on both limiters."""
    budgets = (BudgetRef("2026-01:project:p", 100, 3600),)
    assert isinstance(await limiter.admit("r1", budgets, (), 10, 0), Granted)
    assert await limiter.top_up("e1:w1", {"2026-01:project:p": 25})
    assert not await limiter.top_up("e1:w1", {"2026-01:project:p": 25})  # the same marker: not twice
    assert (await limiter.spent(["2026-01:project:p"]))["2026-01:project:p"] == (25, 10)
