"""A fleet: two instances sharing PostgreSQL and Redis see a key's traffic whole and act once."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
import redis.asyncio as aioredis

from keyplane.clock import FakeClock
from keyplane.guard import engine
from keyplane.guard.windows import RedisWindows
from tests.guard.support import Receiver, ctx_for, make_runtime, new_key
from tests.support import make_settings, postgres_database

REDIS_URL = "redis://127.0.0.1:6379/0"
pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_client():
    r = aioredis.from_url(REDIS_URL)
    yield r
    await r.aclose()


async def test_redis_windows_sum_what_each_instance_saw(redis_client):
    prefix = "kp-test:" + secrets.token_hex(4)
    a, b = RedisWindows(redis_client, prefix), RedisWindows(redis_client, prefix)
    for w in (a, b):
        w.retention = {3600.0: 3}
    clock = FakeClock()
    for i in range(10):
        (a if i % 2 else b).record("k:key_x", 3600.0, clock.now(), {"r": 1, "t": 100, "e404": i % 2})
        clock.advance(60)
    await a.flush()
    await b.flush()
    view = await a.view("k:key_x", 3600.0, clock.now())
    assert view.current == {"r": 10, "t": 1000, "e404": 5}
    assert view.first_seen in (1_800_000_000.0, 1_800_000_060.0)  # each instance's first sighting
    # The cooldown claim is fleet-wide and runs on the injected clock.
    assert await a.claim("rule:k:key_x", clock.now(), 3600)
    assert not await b.claim("rule:k:key_x", clock.now() + 10, 3600)
    assert await b.claim("rule:k:key_x", clock.now() + 3601, 3600)
    # New origins across instances.
    a.record_origin("k:key_x", "i:10.0.0.1", clock.now())
    b.record_origin("k:key_x", "i:10.0.0.2", clock.now())
    b.record_origin("k:key_x", "u:curl/8", clock.now())
    await a.flush()
    await b.flush()
    assert await a.new_origins("k:key_x", clock.now() - 1) == (2, 1, clock.now())
    # Old buckets slide out and are deleted from Redis.
    clock.advance(2 * 3600)
    assert (await b.view("k:key_x", 3600.0, clock.now())).current == {}
    await redis_client.delete(*[k async for k in redis_client.scan_iter(prefix + ":*")])


@pytest.fixture
def pg_url():
    with postgres_database() as url:
        yield url


@pytest.mark.postgres
async def test_two_instances_see_the_key_whole_and_fire_once(tmp_path, pg_url):
    hook = Receiver().start()
    config = f"""
[guard]
defaults = false

[[guard.rules]]
name = "cap"
kind = "ceiling"
threshold = 1000
mode = "revoke"

[[alerts.sinks]]
type = "webhook"
url = "{hook.url}/hook"
"""
    made = []
    try:
        url = pg_url
        # Instance B polls the store slowly: only the Redis message can make it see the revocation at once.
        sa = make_settings(tmp_path / "home", url, config_text=config, KEYPLANE_REDIS_URL=REDIS_URL)
        sb = make_settings(
            tmp_path / "home",
            url,
            config_text=config,
            KEYPLANE_REDIS_URL=REDIS_URL,
            KEYPLANE_SNAPSHOT_POLL_SECONDS="30",
        )
        clock = FakeClock()
        rta, init = await make_runtime(sa, clock)
        rtb, _ = await make_runtime(sb, clock, init=False)
        ga, gb = await engine.create(rta), await engine.create(rtb)
        for rt, g in ((rta, ga), (rtb, gb)):
            rt.features.guard = g
            await g.start()
            made.append((rt, g))
        probe = aioredis.from_url(REDIS_URL)
        t0 = time.monotonic()
        while (await probe.pubsub_numsub(ga.channel))[0][1] < 2:  # both subscriptions are in place
            assert time.monotonic() - t0 < 5
            await asyncio.sleep(0.01)
        await probe.aclose()
        kid = await new_key(rta, init["project_id"])
        await rtb.refresher.refresh()
        for i in range(12):  # 100 tokens a minute, alternating instances: 600 each, 1200 in all
            rt, g = made[i % 2]
            g.observe(ctx_for(rt, kid, tokens=100))
            clock.advance(60)
            await g.drain()
            await made[(i + 1) % 2][1].drain()
        t0 = time.monotonic()
        while any(rt.snapshot.keys_by_id[kid].revoked_at is None for rt in (rta, rtb)):
            assert time.monotonic() - t0 < 1.0, "an instance did not see the revocation within 1 s"
            await asyncio.sleep(0.01)
        assert len(hook.wait_for(1)) == 1
        await asyncio.sleep(0)
        assert len(hook.received) == 1
        fired = ga.counters["fired:revoke"] + gb.counters["fired:revoke"]
        assert fired == 1
        for rt, g in made:
            await g.stop()
            await rt.engine.dispose()
        made.clear()
    finally:
        for rt, g in made:
            await g.stop()
            await rt.engine.dispose()
        hook.stop()
