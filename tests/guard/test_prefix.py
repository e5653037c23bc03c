"""The kill switch's Redis keys and pub/sub channel live under ``redis_prefix`` (#12.17): two
deployments sharing one Redis, even for the same organization, never see each other."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from keyplane.clock import FakeClock
from keyplane.guard import engine
from tests.guard.support import ctx_for, make_runtime, new_key
from tests.support import make_settings

REDIS_URL = "redis://127.0.0.1:6379/0"
pytestmark = pytest.mark.redis

CONFIG = """
[guard]
defaults = false

[[guard.rules]]
name = "cap"
kind = "ceiling"
threshold = 1000000
mode = "alert"
"""


async def test_two_prefixes_on_one_redis_do_not_see_each_other(tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    prefix_a, prefix_b = f"kp-test-a-{tag}", f"kp-test-b-{tag}"
    # One store (so one organization id): only the prefix tells the two deployments apart.
    sa = make_settings(
        tmp_path / "home", config_text=CONFIG, KEYPLANE_REDIS_URL=REDIS_URL, KEYPLANE_REDIS_PREFIX=prefix_a
    )
    sb = make_settings(
        tmp_path / "home", config_text=CONFIG, KEYPLANE_REDIS_URL=REDIS_URL, KEYPLANE_REDIS_PREFIX=prefix_b
    )
    clock = FakeClock()
    rta, init = await make_runtime(sa, clock)
    rtb, _ = await make_runtime(sb, clock, init=False)
    ga, gb = await engine.create(rta), await engine.create(rtb)
    probe = aioredis.from_url(REDIS_URL)
    org = rta.snapshot.org_id
    try:
        assert org and org == rtb.snapshot.org_id
        assert ga.channel.startswith(prefix_a + ":") and gb.channel.startswith(prefix_b + ":")
        for g in (ga, gb):
            await g.start()
        t0 = time.monotonic()
        while [n for _, n in await probe.pubsub_numsub(ga.channel, gb.channel)] != [1, 1]:
            assert time.monotonic() - t0 < 5, "each deployment subscribes to its own channel only"
            await asyncio.sleep(0.01)

        kid = await new_key(rta, init["project_id"])
        await rtb.refresher.refresh()
        for _ in range(5):
            ga.observe(ctx_for(rta, kid, tokens=100))
            clock.advance(1)
        await ga.drain()
        window = next(iter(ga.windows.retention))
        assert (await ga.windows.view("k:" + kid, window, clock.now())).current.get("t") == 500
        assert (await gb.windows.view("k:" + kid, window, clock.now())).current == {}
        # Cooldown claims are per deployment too.
        assert await ga.windows.claim("cap:k:" + kid, clock.now(), 3600)
        assert await gb.windows.claim("cap:k:" + kid, clock.now(), 3600)

        written = [k.decode() async for k in probe.scan_iter(match=f"*{org}*", count=1000)]
        assert written, "the windows were flushed to Redis"
        assert all(k.startswith((prefix_a + ":", prefix_b + ":")) for k in written), written
    finally:
        for g in (ga, gb):
            await g.stop()
        for rt in (rta, rtb):
            await rt.engine.dispose()
        stale = [k for p in (prefix_a, prefix_b) async for k in probe.scan_iter(match=p + ":*")]
        if stale:
            await probe.delete(*stale)
        await probe.aclose()
