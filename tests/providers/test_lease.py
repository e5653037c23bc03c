"""Single-leader polling in a fleet: two keyplane instances on one PostgreSQL database, one provider. Only
the lease holder reads the provider; when it dies the other takes over within one interval; a stopping
leader lets go at once. The heartbeats are driven by the test on an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgspec
import pytest

from keyplane.clock import FakeClock
from keyplane.providers import lease
from keyplane.providers.connector import Connector
from keyplane.store import db
from keyplane.testing.fake_org import Bucket
from tests.support import make_settings, postgres_database

INTERVAL = 30


@pytest.fixture
def fleet(gateways, fake_provider, monkeypatch):
    monkeypatch.setenv("ACME_ADMIN_KEY", fake_provider.fake.admin_key)
    hour = int(time.time()) // 3600 * 3600
    fake_provider.fake.usage.append(Bucket(hour - 3600, "proj_data", "key_data1", "gpt-4o", 100, 50))
    # sync_interval = 0: no background loop; the test runs each instance's heartbeat (Poller.tick) itself
    config = (
        f'[[providers]]\nname = "acme"\nbase_url = "{fake_provider.base_url}"\n'
        'admin_key_env = "ACME_ADMIN_KEY"\nsync_interval = 0\nbackfill_days = 1\n'
    )
    clock = FakeClock(float(hour + 60))
    with postgres_database() as url:
        try:  # two instances of one store and org (one secret), one clock
            a = gateways.start(config, clock, store=url)
            b = gateways.start(config, clock, store=url)
            yield a, b, clock, fake_provider.fake
        finally:
            gateways.stop_all()  # before the database is dropped


def tick(srv, now: float) -> bool:
    """One heartbeat of the instance's poller, with the provider's interval set to INTERVAL."""
    poller = srv.app.runtime.features.providers
    cfg = msgspec.structs.replace(srv.settings.file.providers[0], sync_interval=INTERVAL)

    async def go() -> bool:
        conn = Connector(cfg)
        try:
            return await poller.tick(cfg, conn, now)
        finally:
            await conn.close()

    return bool(srv.call(go()))


def reads(fake) -> int:
    """How many syncs read the provider (each reads /organization/costs once: one page)."""
    return sum(1 for m, path, _ in fake.requests if m == "GET" and path.endswith("/organization/costs"))


@pytest.mark.postgres
def test_one_instance_polls_and_the_other_takes_over(fleet):
    a, b, clock, fake = fleet
    t0 = clock.now()
    pa, pb = (s.app.runtime.features.providers for s in (a, b))
    # Both heartbeat at the same moment: exactly one takes the lease and syncs.
    with ThreadPoolExecutor(2) as ex:
        first = list(ex.map(lambda s: tick(s, t0), (a, b)))
    assert sorted(first) == [False, True] and reads(fake) == 1
    leader, follower = (a, b) if first[0] else (b, a)
    pl, pf = (pa, pb) if first[0] else (pb, pa)
    assert pl.leader == {"acme": True} and pf.leader == {"acme": False}
    assert pl.last["acme"]["inventory"]["api_key"] == 4 and "acme" not in pf.last

    # Heartbeats within the interval: nobody reads the provider again.
    for dt in (10, 20):
        assert not tick(leader, t0 + dt) and not tick(follower, t0 + dt)
    assert reads(fake) == 1
    # the follower's gauges come from the same SQL (the leader's ingested hour), without reading the provider
    assert pf.metrics.tokens == pl.metrics.tokens and pf.metrics.tokens
    assert pf.metrics.leader == {"acme": False} and "acme" not in pf.metrics.synced
    assert tick(leader, t0 + INTERVAL) and not tick(follower, t0 + INTERVAL) and reads(fake) == 2

    # The leader dies after its heartbeat at t0+40: its lease (ttl 15 s) lapses at t0+55, the follower's
    # heartbeats (every 5 s) take it at t0+60 at the latest, and it syncs on the fleet's schedule (t0+60).
    assert not tick(leader, t0 + 40)
    assert not tick(follower, t0 + 50) and pf.leader["acme"] is False
    assert tick(follower, t0 + 60) and pf.leader["acme"] is True and reads(fake) == 3
    # The old leader comes back: it follows.
    assert not tick(leader, t0 + 65) and pl.leader["acme"] is False and reads(fake) == 3


@pytest.mark.postgres
def test_a_stopping_leader_lets_go_at_once(fleet):
    a, b, clock, fake = fleet
    t0 = clock.now()
    assert tick(a, t0) and not tick(b, t0 + 1)
    a.call(a.app.runtime.features.providers.stop())  # what the server's shutdown runs
    assert not tick(b, t0 + 2)  # the lease is B's now, the next sync on schedule
    assert b.app.runtime.features.providers.leader == {"acme": True}
    assert tick(b, t0 + INTERVAL) and reads(fake) == 2


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def test_racing_instances_never_both_take_an_expired_lease(tmp_path, backend):
    """Two engines (two instances' connections) race for the lease, again and again: one wins each round."""

    async def race(url: str) -> None:
        e1, e2 = db.make_engine(url), db.make_engine(url)
        if backend == "sqlite":
            await db.migrate(e1)
        try:
            s1, s2 = db.sessionmaker(e1), db.sessionmaker(e2)
            for i in range(40):
                now = 1_800_000_000 + i * 100.0  # every earlier lease has expired (ttl 10 s)
                got = await asyncio.gather(
                    lease.acquire(s1, "acme", "one", now, 10), lease.acquire(s2, "acme", "two", now, 10)
                )
                assert sorted(g.held for g in got) == [False, True], (i, got)
                assert got[0].holder == got[1].holder
                # the holder renews, the other cannot
                winner = got[0].holder
                assert await lease.renew(s1 if winner == "one" else s2, "acme", winner, now + 1, 10)
                assert not await lease.renew(
                    s2 if winner == "one" else s1, "acme", "two" if winner == "one" else "one", now + 1, 10
                )
        finally:
            await e1.dispose()
            await e2.dispose()

    if backend == "postgres":
        with postgres_database() as url:
            asyncio.run(race(make_settings(tmp_path / "h", url).database_url))
    else:
        asyncio.run(race(make_settings(tmp_path / "h").database_url))


@pytest.mark.postgres
def test_two_serving_instances_run_one_background_poller(gateways, fake_provider, monkeypatch):
    """The real background loops (keyplane serve) of two instances: one syncs at start-up, the other follows;
    when the leader shuts down, the other holds the lease at its next heartbeat (every 5 s here)."""
    monkeypatch.setenv("ACME_ADMIN_KEY", fake_provider.fake.admin_key)
    config = (
        f'[[providers]]\nname = "acme"\nbase_url = "{fake_provider.base_url}"\n'
        'admin_key_env = "ACME_ADMIN_KEY"\nsync_interval = 30\nbackfill_days = 1\n'
    )

    def state(srv) -> dict:
        h = {"Authorization": f"Bearer {srv.admin_key}"}
        return httpx.get(f"{srv.v1}/organization/providers", headers=h).json()["data"][0]

    def until(check, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while not (got := check()):
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)
        return got

    with postgres_database() as url:
        try:
            a = gateways.start(config, store=url)
            b = gateways.start(config, store=url)
            until(lambda: state(a)["last_sync"] or state(b)["last_sync"])

            def both() -> tuple | None:  # each instance has run its first heartbeat
                got = (state(a)["poller_leader"], state(b)["poller_leader"])
                return got if None not in got else None

            flags = until(both)
            assert sorted(flags) == [False, True] and reads(fake_provider.fake) == 1
            leader, follower = (a, b) if flags[0] else (b, a)
            leader.stop()
            until(lambda: state(follower)["poller_leader"])
            assert reads(fake_provider.fake) == 1  # the new leader keeps the schedule: next sync at +30 s
        finally:
            gateways.stop_all()  # before the database is dropped
