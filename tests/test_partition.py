"""Partitions (issue 15 item 9): a revocation reaches an instance cut off from PostgreSQL through the
bus, and an instance that can confirm nothing stops admitting after max_staleness_seconds.

Two real instances share one PostgreSQL database and one Redis; instance B reaches both through TCP
proxies this test runs and cuts (blackhole: connections stay open, bytes go nowhere)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from keyplane.config import DEFAULT_CONFIG
from tests.faults import FaultProxy
from tests.support import Gateways, RunningServer, postgres_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
REDIS_URL = "redis://127.0.0.1:6379/0"
STALENESS = 2.0


@pytest.fixture
def pair(gateways: Gateways) -> Iterator[tuple[RunningServer, RunningServer, FaultProxy, FaultProxy]]:
    secret = secrets.token_urlsafe(32)
    prefix = f"kptest-partition-{secrets.token_hex(4)}"
    common = {
        "KEYPLANE_SECRET_KEY": secret,
        "KEYPLANE_REDIS_PREFIX": prefix,
        "KEYPLANE_MAX_STALENESS_SECONDS": str(STALENESS),
    }
    with postgres_database() as url:
        pg = urlsplit(url)
        pg_proxy = FaultProxy(pg.port or 5432, pg.hostname or "127.0.0.1")
        redis_proxy = FaultProxy(6379)
        a = gateways.start(DEFAULT_CONFIG, store=url, KEYPLANE_REDIS_URL=REDIS_URL, **common)
        b_url = url.replace(f"{pg.hostname}:{pg.port}", f"127.0.0.1:{pg_proxy.port}")
        b = gateways.start(  # A's store and org, through the proxy
            DEFAULT_CONFIG,
            store=b_url,
            init=a.init,
            KEYPLANE_REDIS_URL=f"redis://127.0.0.1:{redis_proxy.port}/0",
            **common,
        )
        try:
            yield a, b, pg_proxy, redis_proxy
        finally:
            pg_proxy.restore()
            redis_proxy.restore()
            time.sleep(0.3)  # teardown: the restored proxies' connections settle before the servers stop
            gateways.stop(b)
            gateways.stop(a)
            pg_proxy.close()
            redis_proxy.close()


def _chat(srv: RunningServer, key: str) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=srv.v1, api_key=key, max_retries=0, timeout=2.0)
    return client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hi"}], max_tokens=5)


def test_a_partitioned_instance_refuses_a_revoked_key_and_stops_when_it_cannot_confirm(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, pg_proxy, redis_proxy = pair
    admin = httpx.Client(base_url=a.v1 + "/organization", headers={"authorization": f"Bearer {a.admin_key}"})
    created = admin.post(f"/projects/{a.project_id}/api_keys", json={"name": "other"})
    assert created.status_code == 200, created.text
    other = created.json()["value"]
    t0 = time.monotonic()
    while True:  # B has loaded the new key
        try:
            _chat(b, other)
            break
        except openai.AuthenticationError:
            assert time.monotonic() - t0 < 5
            time.sleep(0.05)  # poll interval (a deadline loop)
    _chat(b, a.api_key)
    rt = b.app.runtime
    assert rt is not None and rt.bus is not None
    b.call(asyncio.wait_for(rt.bus.subscribed.wait(), 5))  # type: ignore[attr-defined]

    # 1. B loses PostgreSQL but still reaches Redis; the key is revoked through A's admin API.
    pg_proxy.blackhole()
    r = admin.post(f"/api_keys/{a.init['api_key_id']}/revoke", json={"reason": "leaked"})
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    while True:
        try:
            _chat(b, a.api_key)
        except openai.AuthenticationError as e:
            assert "leaked" in e.message
            break
        assert time.monotonic() - t0 < 1.0, "the partitioned instance served the revoked key"
        time.sleep(0.02)  # poll interval (a deadline loop)
    # A's heartbeats tell B it missed nothing: it keeps serving other keys past the staleness bound.
    time.sleep(STALENESS + 1)  # real time past the staleness bound (monotonic clock): B must go on serving
    assert _chat(b, other).choices

    # 2. B loses Redis too: it can confirm nothing, and answers 503 once the bound has passed.
    redis_proxy.blackhole()
    cut_at = time.monotonic()
    while True:
        try:
            _chat(b, other)
        except openai.InternalServerError as e:
            if e.status_code == 503 and e.code == "authority_stale":
                assert e.response.headers.get("retry-after") == "1"
                break
        except (openai.APITimeoutError, openai.APIStatusError):
            pass  # the limits store hangs (blackholed) until the bound refuses first
        assert time.monotonic() - cut_at < STALENESS + 4, "B kept admitting with no way to confirm its keys"
        time.sleep(0.05)  # poll interval (a deadline loop)
    assert time.monotonic() - cut_at >= STALENESS - 1.0
    assert a.call(asyncio.sleep(0, result=True))  # not a wait: A's event loop still runs
    assert _chat(a, other).choices  # A, which reaches everything, serves on

    # 3. The partition heals: B confirms from the store and serves again.
    pg_proxy.restore()
    redis_proxy.restore()
    t0 = time.monotonic()
    while True:
        try:
            assert _chat(b, other).choices
            break
        except (openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError):
            assert time.monotonic() - t0 < 20, "B did not recover after the partition healed"
            time.sleep(0.2)  # poll interval (a deadline loop)
    with pytest.raises(openai.AuthenticationError):
        _chat(b, a.api_key)
