"""Gateways for the Realtime API tests: keyplane routed to the fake realtime upstream (SQLite)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import httpx
import pytest

from keyplane.clock import Clock
from keyplane.testing.fake_realtime import FakeRealtime
from tests.support import Gateways, RunningServer

UPSTREAM_KEY_ENV = "KP_REALTIME_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-upstream-realtime-test-0123456789"
os.environ.setdefault(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
# A response of the test model reserves, and costs, exactly 8000 micro-dollars: input is free, output
# is $1600 per 1M tokens, and the output is pinned at max_output = 5 tokens.
TEST_MODEL = "gpt-realtime-test"
PRICED = f'[prices."{TEST_MODEL}"]\ninput = 0\noutput = 1600\nmax_output = 5\ncontext_window = 100\n'
COST = 8000


@pytest.fixture
def fake_rt() -> Iterator[FakeRealtime]:
    with FakeRealtime() as f:
        yield f


@pytest.fixture
def make_gateway(gateways: Gateways, fake_rt: FakeRealtime) -> Callable[..., RunningServer]:
    def make(extra: str = "", clock: Clock | None = None, **env: str) -> RunningServer:
        text = (
            f'[[upstreams]]\nname = "fake"\nbase_url = "{fake_rt.base_url}"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n'
            'models = ["gpt-*"]\n\n' + PRICED + extra
        )
        return gateways.start(text, clock, **env)

    return make


def admin(srv: RunningServer, method: str, path: str, body: object = None) -> dict:
    r = httpx.request(
        method,
        srv.v1 + "/organization" + path,
        json=body,
        headers={"Authorization": f"Bearer {srv.admin_key}"},
        timeout=30,
    )
    assert r.status_code < 300, r.text
    return r.json()
