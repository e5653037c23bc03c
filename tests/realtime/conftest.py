"""Gateways for the Realtime API tests: keyplane routed to the fake realtime upstream (SQLite)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from keyplane.testing.fake_realtime import FakeRealtime
from tests.support import RunningServer, make_settings, start_server

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
def make_gateway(template_home: Path, tmp_path: Path, fake_rt: FakeRealtime) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def make(extra: str = "", clock: object = None, **env: str) -> RunningServer:
        home = tmp_path / f"home{len(started)}"
        shutil.copytree(template_home, home)
        init = json.loads((home / "init.json").read_text())
        text = (
            f'[[upstreams]]\nname = "fake"\nbase_url = "{fake_rt.base_url}"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n'
            'models = ["gpt-*"]\n\n' + PRICED + extra
        )
        srv = start_server(make_settings(home, "", config_text=text, **env), init, clock=clock)  # type: ignore[arg-type]
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()


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
