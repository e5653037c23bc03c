"""Fixtures for the data plane: the project's fake upstream and keyplane servers routed to it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from keyplane.clock import Clock
from keyplane.testing import FakeUpstream
from tests.support import Gateways, RunningServer

UPSTREAM_KEY = "sk-upstream-test-0123456789"
os.environ.setdefault("KP_TEST_UPSTREAM_KEY", UPSTREAM_KEY)


def fake_config(*fakes: FakeUpstream, extra: str = "", **fields: object) -> str:
    """A keyplane.toml with one [[upstreams]] per fake (named fake, fake2...) plus the demo upstream."""
    out = []
    for i, f in enumerate(fakes):
        name = "fake" if i == 0 else f"fake{i + 1}"
        opts = {
            "models": ["gpt-*", "fake-*", "text-embedding-*"],
            "retry_backoff": 0.01,
            "breaker_failures": 1000,
            "max_retries": 2,
            **fields,
        }
        lines = [f'name = "{name}"', f'base_url = "{f.base_url}"', 'api_key_env = "KP_TEST_UPSTREAM_KEY"']
        for k, v in opts.items():
            lines.append(f"{k} = {_toml(v)}")
        out.append("[[upstreams]]\n" + "\n".join(lines))
    out.append('[[upstreams]]\nname = "demo"\nbase_url = "demo"\nmodels = ["demo-*"]')
    return "\n\n".join(out) + "\n" + extra


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


@pytest.fixture
def make_gateway(gateways: Gateways) -> Callable[..., RunningServer]:
    """Start a keyplane (SQLite) with the given keyplane.toml text (and ``clock``, default the real one); stopped
    after the test."""

    def make(config_text: str, clock: Clock | None = None, **env: str) -> RunningServer:
        return gateways.start(config_text, clock, **env)

    return make


@pytest.fixture(scope="module")
def gw_module(
    template_home: Path, tmp_path_factory: pytest.TempPathFactory, fake_session: FakeUpstream
) -> Iterator[RunningServer]:
    """One gateway (the factory's) shared by a test module: the fake upstream (breaker off, fast retries) and
    demo."""
    g = Gateways(template_home, tmp_path_factory.mktemp("gw"))
    yield g.start(fake_config(fake_session))
    g.stop_all()


def record_settled(srv: RunningServer) -> list:
    """Keep every settled RequestContext: one more tap after the pipeline's steps (the server's own taps still
    run); a module's shared gateway records into a fresh list each time (the earlier recorder is taken off)."""
    settled: list = []

    async def settle(ctx) -> None:
        settled.append(ctx)

    assert srv.app.runtime is not None
    taps = srv.app.runtime.pipeline.taps
    earlier = srv.extra.get("recorder")
    if earlier in taps:
        taps.remove(earlier)
    taps.append(settle)
    srv.extra["recorder"] = settle
    srv.extra["settled"] = settled
    return settled


def wait_for(cond: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll until cond() is true (no sleep-and-hope: fails loudly on timeout)."""
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def gw(gw_module: RunningServer, fake: FakeUpstream) -> RunningServer:
    """The module's gateway, every step on as users run it, with a fresh settle recorder
    (``gw.extra["settled"]``). Billing writes the output limit it reserves into a forwarded body that has
    none (:func:`output_limit`): tests that compare forwarded bytes send a limit of their own."""
    record_settled(gw_module)
    return gw_module


def output_limit(srv: RunningServer, model: str) -> int:
    """The output limit admission reserves, and writes into the forwarded body, for a request to ``model`` that
    sets none (billing/quote_tokens.py): the model's ``max_output`` in the price table, else default_max_tokens."""
    billing = srv.app.runtime.features.billing
    assert billing is not None
    price = billing.prices.lookup(model)
    assert price is not None and price.output > 0, f"{model} is not priced: billing adds no limit"
    return price.max_output or billing.default_max_tokens


def admin(srv: RunningServer, method: str, path: str, json: object = None) -> dict:
    r = httpx.request(
        method, srv.v1 + "/organization" + path, json=json, headers={"Authorization": f"Bearer {srv.admin_key}"}
    )
    assert r.status_code < 300, r.text
    return r.json()


def new_key(srv: RunningServer, permissions: object = "all", **kw: object) -> dict:
    return admin(
        srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "test key", "permissions": permissions, **kw}
    )
