"""Gateways for the cache tests: the project's fake upstream (or three fake replicas), memory or Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keyplane.clock import Clock
from keyplane.testing import FakeUpstream
from tests.support import Gateways, RunningServer

REDIS_URL = "redis://127.0.0.1:6379/0"
UPSTREAM_KEY_ENV = "KP_CACHE_TEST_UPSTREAM_KEY"
os.environ.setdefault(UPSTREAM_KEY_ENV, "sk-upstream-cache-test")
# Priced so that a miss costs something and a hit visibly costs nothing.
PRICES = '[prices."gpt-4o-mini"]\ninput = 1000\ncached_input = 500\noutput = 1600\n'


def upstreams(*fakes: FakeUpstream) -> str:
    out = []
    for i, f in enumerate(fakes):
        name = "fake" if i == 0 else f"fake{i + 1}"
        out.append(
            f'[[upstreams]]\nname = "{name}"\nbase_url = "{f.base_url}"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n'
            'models = ["gpt-*", "text-embedding-*"]\nretry_backoff = 0.01\nbreaker_failures = 1000\n'
        )
    out.append('[[upstreams]]\nname = "demo"\nbase_url = "demo"\nmodels = ["demo-*"]\n')
    return "\n".join(out) + "\n" + PRICES


def _clean_redis(prefix: str) -> None:
    async def go() -> None:
        import redis.asyncio as aioredis

        r = aioredis.from_url(REDIS_URL)
        keys = [k async for k in r.scan_iter(match=f"{prefix}*", count=1000)]
        keys += [k async for k in r.scan_iter(match="{" + prefix + "}*", count=1000)]
        if keys:
            await r.delete(*keys)
        await r.aclose()

    asyncio.run(go())


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


@pytest.fixture
def make_gateway(gateways: Gateways) -> Iterator[Callable[..., RunningServer]]:
    """Start a keyplane (SQLite) with the given keyplane.toml text; ``redis_prefix`` puts it on Redis."""
    prefixes: list[str] = []

    def make(
        config_text: str,
        clock: Clock | None = None,
        redis: bool = False,
        home: Path | None = None,
        redis_prefix: str | None = None,
    ) -> RunningServer:
        env: dict[str, str] = {}
        if redis:
            if redis_prefix is None:
                redis_prefix = f"kpcache-{secrets.token_hex(4)}"
                prefixes.append(redis_prefix)
            env = {"KEYPLANE_REDIS_URL": REDIS_URL, "KEYPLANE_REDIS_PREFIX": redis_prefix}
        return gateways.start(config_text, clock, home, **env)

    yield make
    gateways.stop_all()  # before their Redis keys go
    for p in prefixes:
        _clean_redis(p)
