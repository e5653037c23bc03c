"""The spend ledger is durable: a restart does not forget spend, a flushed Redis is rebuilt from SQL,
expired credit stops counting."""

from __future__ import annotations

import asyncio
import time

import pytest

from keyplane.clock import FakeClock
from tests.billing.conftest import (
    COST,
    admin_http,
    billing_of,
    clean_redis,
    config,
    flush,
    redis_env,
    unique_prefix,
)
from tests.billing.test_enforcement import _fire

LIMIT = {"currency": "USD", "interval": "month", "threshold_amount": 40}  # 50 requests


def test_restart_keeps_this_months_spend(database_url, gateways, fake):
    first = gateways.start(config(fake), store=database_url)
    try:
        with admin_http(first) as h:
            h.post(f"/projects/{first.project_id}/spend_limit", json=LIMIT)
        assert asyncio.run(_fire(first.v1, first.api_key, 30)) == {"ok": 30}
    finally:
        gateways.stop(first)  # the last batch is written on the way out
    srv = gateways.another(first)  # restarted: the same home, store and org
    with admin_http(srv) as h:
        assert h.get(f"/projects/{srv.project_id}/spend_limit").json()["spent"] == 24
    assert asyncio.run(_fire(srv.v1, srv.api_key, 30)) == {"ok": 20, "project_spend_limit_exceeded": 10}


@pytest.mark.redis
def test_flushed_redis_is_rebuilt_from_sql(make_gateway, fake):
    prefix = unique_prefix()
    srv = None
    try:
        # Rate limits off: after a loss of Redis's data its buckets start used up (tests/billing/test_recovery.py).
        srv = make_gateway("[limits]\nenabled = false\n", **redis_env(prefix))
        with admin_http(srv) as h:
            h.post(f"/projects/{srv.project_id}/spend_limit", json=LIMIT)
        assert asyncio.run(_fire(srv.v1, srv.api_key, 30)) == {"ok": 30}
        flush(srv)
        clean_redis(prefix)  # Redis lost everything (restart without persistence, FLUSHALL...)
        assert asyncio.run(_fire(srv.v1, srv.api_key, 30)) == {"ok": 20, "project_spend_limit_exceeded": 10}
        assert srv.call(billing_of(srv).spent("project", srv.project_id)) == (50 * COST, 0)
    finally:
        if srv is not None:
            srv.stop()  # before the clean-up: a running instance would rebuild its counters
        clean_redis(prefix)


def test_expired_credit_stops_counting(make_gateway, fake):
    clock = FakeClock(1_800_000_000.0)
    srv = make_gateway(clock=clock)
    with admin_http(srv) as h:
        h.post("/credit_grants", json={"amount": 4, "expires_at": int(clock.now()) + 3600})  # 5 requests
        h.post("/credit_grants", json={"amount": 2})  # 2.5 requests, never expires
        assert asyncio.run(_fire(srv.v1, srv.api_key, 3)) == {"ok": 3}
        flush(srv)  # soonest-expiring grant first: 2.4 of its 4 cents used
        clock.advance(3601)
        deadline = time.monotonic() + 5
        while h.get("/credit_balance").json()["expired"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        b = h.get("/credit_balance").json()
        assert (b["granted"], b["used"], b["expired"], b["available"]) == (6, 3, 1, 2)
        assert asyncio.run(_fire(srv.v1, srv.api_key, 5)) == {"ok": 2, "insufficient_quota": 3}


def test_unreachable_redis_refuses_rather_than_skipping_limits(gateways, fake):
    import httpx

    srv = gateways.start(config(fake), KEYPLANE_REDIS_URL="redis://127.0.0.1:1/0")
    r = httpx.post(
        srv.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {srv.api_key}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
    assert not fake.model_requests()


def test_the_period_of_an_instant_is_its_utc_month_at_every_boundary():
    """period_of answers from the UTC day (cached): the month boundaries are UTC midnights."""
    import calendar
    import random
    from datetime import UTC, datetime

    from keyplane.billing.state import period_of

    def month(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m")

    rnd = random.Random(3)
    instants = [rnd.uniform(0, 4e9) for _ in range(20_000)]
    for y in range(2024, 2031):
        for m in range(1, 13):
            start = calendar.timegm((y, m, 1, 0, 0, 0))
            instants += [start - 0.0005, start, start + 0.25, start + 86399.999]
    assert [period_of(t) for t in instants] == [month(t) for t in instants]
