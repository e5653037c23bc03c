"""Week 50 red-team review, round 19: a holder of a valid project key spreading its requests across TWO instances of
a fleet (PostgreSQL store, Redis limiter and bus), with faults a test can inject on its own Redis key prefix: the
budget counters lost mid-run (the prefix's keys deleted, as a Redis restart or FLUSHALL does) and rebuilt from SQL
and the journal while requests admitted before the loss still run on both instances. Each test states the secure
behaviour and failed on the code as this round found it; each passes with its fix: 1 (the rebuild counted the
ledger and the journal but not the reservations of the requests still running, on any instance: their budget was
sold again; billing/engine.py holds them again, and Redis admits nothing against a limit for a grace period after
a rebuild: limits/redis_scripts.py ADMIT) and 2, left open by the round and fixed after it (a settle replayed after
Redis came back added nothing once its reservation lapsed at its TTL while the instance was cut off: a replayed
settle now adds its cost unless a rebuild after it counted it; limits/redis_backend.py) (gateways on PostgreSQL +
Redis, the fake upstream, PRICED gpt-4o-mini: $0 input, $1600 per 1M output tokens, so max_tokens=5 reserves and
costs 8000 micro-dollars)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from keyplane.limits import BudgetRef, Granted, Reservation
from keyplane.limits.redis_backend import RedisLimiter
from tests.billing.conftest import (
    COST,
    REDIS_URL,
    billing_of,
    clean_redis,
    config,
    redis_env,
    set_spend_limit,
    unique_prefix,
)
from tests.faults import FaultProxy
from tests.support import Gateways, RunningServer, postgres_database

Budget = tuple[BudgetRef, ...]

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _chat(srv: RunningServer, stream: bool = False, delay_ms: int = 0) -> str:
    headers = {"Authorization": f"Bearer {srv.api_key}"}
    if delay_ms:
        headers["x-fake-chunk-delay-ms"] = str(delay_ms)
    body = {**CHAT, "stream": True} if stream else CHAT
    with httpx.Client(timeout=60) as c, c.stream("POST", srv.v1 + "/chat/completions", json=body, headers=headers) as r:
        r.read()
        if r.status_code == 200:
            return "ok"
        try:
            return str(r.json()["error"]["code"])
        except Exception:
            return str(r.status_code)


def _reserved(srv: RunningServer) -> int:
    return srv.call(billing_of(srv).spent("project", srv.project_id))[1]


def test_a_redis_loss_mid_run_does_not_sell_the_running_requests_budget_again(gateways: Gateways, fake) -> None:
    """Attack: with a $0.04 project limit (5 requests), 5 slow streams run, 3 on instance A and 2 on B, holding the
    whole budget. Redis loses the fleet's counters (the test deletes its prefix's keys); the next admission
    rebuilds them from SQL and the journal, where the running streams are not yet. The key then sends 5 more
    requests across A and B. Secure: the rebuilt counters still hold what the running requests reserved (every
    instance holds its in-flight reservations again before anything is sold against a limit): the second wave is
    refused and the project never spends past its limit. Found: the second wave was served, $0.08 on $0.04."""
    prefix = unique_prefix()
    with postgres_database() as url:
        a = gateways.start(config(fake), store=url, **redis_env(prefix))
        b = gateways.start(config(fake), store=url, **redis_env(prefix))
        try:
            set_spend_limit(a, 4)  # 40000 µ$: 5 requests
            deadline = time.monotonic() + 10
            while billing_of(b).cfg.revision != billing_of(a).cfg.revision and time.monotonic() < deadline:
                time.sleep(0.05)
            with concurrent.futures.ThreadPoolExecutor(20) as pool:
                slow = [pool.submit(_chat, srv, True, 1500) for srv in (a, a, a, b, b)]
                deadline = time.monotonic() + 10
                while _reserved(a) < 5 * COST and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert _reserved(a) == 5 * COST
                clean_redis(prefix)  # the counters are lost while the 5 streams run
                first = collections.Counter(f.result() for f in [pool.submit(_chat, srv) for srv in (a, b)])
                time.sleep(3.0)  # every instance's billing tick has seen the rebuild
                second = collections.Counter(f.result() for f in [pool.submit(_chat, srv) for srv in (a, b, a, b, a)])
                assert all(f.result() == "ok" for f in slow)
            assert first["ok"] == 0, first
            assert second["ok"] == 0, second
            assert srv_spent(a) <= 5 * COST
        finally:
            gateways.stop_all()
            clean_redis(prefix)


def srv_spent(srv: RunningServer) -> int:
    return srv.call(billing_of(srv).spent("project", srv.project_id))[0]


@contextlib.asynccontextmanager
async def _two_limiters(limit: int) -> AsyncIterator[tuple[RedisLimiter, RedisLimiter, FaultProxy, Budget]]:
    """Instance A's limiter on Redis, instance B's through a fault proxy (a short reservation TTL, 0.3 s), on a fresh
    prefix seeded as at start; one key budget of ``limit`` micro-dollars. Everything is deleted and closed after."""
    prefix = unique_prefix()
    proxy = FaultProxy(6379)
    b = RedisLimiter(proxy.url_for(REDIS_URL), prefix, 0.3, timeout=0.3)
    a = RedisLimiter(REDIS_URL, prefix, 0.3)
    try:
        await a.seed({}, {})
        yield a, b, proxy, (BudgetRef("2026-12:api_key:k1", limit, 0),)
    finally:
        await a.delete_all()
        await a.close()
        await b.close()
        proxy.close()


async def test_a_settle_replayed_after_its_reservation_lapsed_still_counts_the_cost() -> None:
    """Attack: instance B is cut from Redis (the fault proxy refuses it) while a request it admitted runs; B cannot
    renew, the reservation lapses at its TTL and instance A's next admission drops it. The request ends, B's settle
    fails and is queued; Redis is back and B replays it. Secure: the replay adds the request's cost to the live
    counter (once: a settle that was applied is not applied again), so the key cannot spend it a second time.
    Found: the replay is strict, finds no reservation and adds nothing: the counter stays short of the money spent
    until Redis loses its data, and the key spends past its limit by every such request."""
    async with _two_limiters(2 * COST) as (a, b, proxy, budget):
        rid = secrets.token_hex(8)
        assert isinstance(await b.admit(rid, budget, (), COST, 0), Granted)
        proxy.refuse()
        await asyncio.sleep(0.5)  # past the TTL: B could not renew
        assert isinstance(await a.admit("other", budget, (), COST, 0), Granted)  # drops B's lapsed one
        with pytest.raises(Exception):  # whatever the cut connection raises
            await b.settle(Reservation(rid, COST, 0, budget, ()), COST, 0)
        proxy.restore()
        await b.retry_pending()
        spent, reserved = (await a.spent([budget[0].key]))[budget[0].key]
        assert (spent, reserved) == (COST, COST)  # B's request spent COST; A's still holds COST


async def test_a_settle_queued_before_a_rebuild_is_not_counted_twice() -> None:
    """The other side of the fix above: a settle queued while Redis was unreachable, then Redis lost its data and the
    counters were rebuilt from SQL and the journal (which hold the request: its record follows its settle). Its
    replay must not add the cost again: spent stays what the rebuild counted."""
    async with _two_limiters(4 * COST) as (a, b, proxy, budget):
        rid = secrets.token_hex(8)
        assert isinstance(await b.admit(rid, budget, (), COST, 0), Granted)
        proxy.refuse()
        with pytest.raises(Exception):  # whatever the cut connection raises
            await b.settle(Reservation(rid, COST, 0, budget, ()), COST, 0)
        await asyncio.sleep(1.2)  # the loss and the rebuild come clearly after the settle was queued
        await a.delete_all()  # Redis lost its data ...
        await a.seed({budget[0].key: COST}, {}, after_loss=True)  # ... and was rebuilt: the journal holds the cost
        proxy.restore()
        assert await b.retry_pending() == 1
        assert (await a.spent([budget[0].key]))[budget[0].key] == (COST, 0)  # once, not twice
