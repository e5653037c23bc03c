"""Gateways for limits and billing tests: the fake upstream with known usage, on both backends.

``backend`` runs a test on the in-process limiter and on Redis (a key prefix of its own, deleted
afterwards). The fake upstream answers gpt-4o-mini with "Hello from the fake upstream.", 5
completion tokens (one per word); PRICED prices it at 0 for input and $1600 per 1M output tokens, so
a request with max_tokens=5 reserves, and costs, exactly 8000 micro-dollars (0.8 cents).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from keyplane.clock import Clock
from keyplane.limits.redis_backend import RedisLimiter
from keyplane.testing import FakeUpstream
from tests.support import Gateways, RunningServer

REDIS_URL = "redis://127.0.0.1:6379/0"
UPSTREAM_KEY_ENV = "KP_BILLING_TEST_UPSTREAM_KEY"
PRICED = '[prices."gpt-4o-mini"]\ninput = 0\noutput = 1600\n'
COST = 8000  # micro-dollars per request with max_tokens=5
os.environ.setdefault(UPSTREAM_KEY_ENV, "sk-upstream-billing-test")


def config(fake: FakeUpstream, extra: str = "") -> str:
    return (
        f'[[upstreams]]\nname = "fake"\nbase_url = "{fake.base_url}"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n'
        'models = ["gpt-*", "fake-*", "text-embedding-*"]\nretry_backoff = 0.01\nbreaker_failures = 1000\n'
        'max_retries = 2\n\n[[upstreams]]\nname = "demo"\nbase_url = "demo"\nmodels = ["demo-*"]\n\n' + PRICED + extra
    )


def unique_prefix() -> str:
    """A Redis key prefix for one test, under this xdist worker's own (swept at the end of the session)."""
    return f"kptest-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{secrets.token_hex(4)}"


@pytest.fixture(scope="session", autouse=True)
def _sweep_redis_prefixes() -> Iterator[None]:
    yield
    clean_redis(f"kptest-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-*", pattern=True)


def redis_env(prefix: str) -> dict[str, str]:
    return {"KEYPLANE_REDIS_URL": REDIS_URL, "KEYPLANE_REDIS_PREFIX": prefix}


def clean_redis(prefix: str, pattern: bool = False) -> None:
    async def go() -> None:
        lim = RedisLimiter(REDIS_URL, prefix, 1)
        if pattern:  # every prefix matching a glob
            async for key in lim.redis.scan_iter(match="{" + prefix + "}:*", count=1000):
                await lim.redis.delete(key)
        else:
            await lim.delete_all()
        await lim.close()

    asyncio.run(go())


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Environment selecting the limiter: {} (in-process) or Redis with a prefix of this test."""
    if request.param == "memory":
        yield {}
        return
    prefix = unique_prefix()
    yield redis_env(prefix)
    clean_redis(prefix)


@pytest.fixture
def make_gateway(
    gateways: Gateways, fake: FakeUpstream, backend: dict[str, str]
) -> Iterator[Callable[..., RunningServer]]:
    """Start a keyplane on SQLite routed to the fake upstream (and demo), on the test's backend."""

    def make(extra: str = "", clock: Clock | None = None, home: Path | None = None, **env: str) -> RunningServer:
        return gateways.start(config(fake, extra), clock, home, **{**backend, **env})

    yield make
    gateways.stop_all()  # before the backend's teardown deletes the test's Redis keys under a live server


@pytest.fixture
def gw(make_gateway: Callable[..., RunningServer]) -> RunningServer:
    return make_gateway()


def admin_http(srv: RunningServer) -> httpx.Client:
    return httpx.Client(
        base_url=srv.v1 + "/organization", headers={"Authorization": f"Bearer {srv.admin_key}"}, timeout=30
    )


def admin_sdk(srv: RunningServer) -> OpenAI:
    return OpenAI(base_url=srv.v1, admin_api_key=srv.admin_key, api_key="unused", max_retries=0)


def new_key(srv: RunningServer, name: str = "test key") -> dict:
    with admin_http(srv) as h:
        r = h.post(f"/projects/{srv.project_id}/api_keys", json={"name": name})
        assert r.status_code == 200, r.text
        return r.json()


def billing_of(srv: RunningServer):
    return srv.app.runtime.features.billing


def set_spend_limit(srv: RunningServer, cents: int) -> None:
    """The monthly spend limit of the gateway's project, in cents (the admin API, as an operator sets it)."""
    with admin_http(srv) as h:
        r = h.post(
            f"/projects/{srv.project_id}/spend_limit",
            json={"currency": "USD", "interval": "month", "threshold_amount": cents},
        )
        assert r.status_code == 200, r.text


def flush(srv: RunningServer) -> None:
    srv.call(billing_of(srv).flush())


def ledger_micros(srv: RunningServer, scope: str, sid: str, period: str | None = None) -> int:
    """What the SQL spend ledger holds for a scope this month (or ``period``), in micro-dollars."""
    from sqlalchemy import func, select

    from keyplane.billing.models import SpendLedger

    month = period or billing_of(srv).period

    async def go() -> int:
        async with srv.app.runtime.engine.connect() as conn:
            v = await conn.execute(
                select(func.coalesce(func.sum(SpendLedger.micros), 0)).where(
                    SpendLedger.period == month, SpendLedger.scope == scope, SpendLedger.scope_id == sid
                )
            )
            return int(v.scalar() or 0)

    return int(srv.call(go()))


@pytest.fixture
def admin(server) -> OpenAI:
    """The official SDK's admin client (on the shared `server`: SQLite and PostgreSQL)."""
    return admin_sdk(server)


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with admin_http(server) as c:
        yield c
