# ruff: noqa: F811 - the fixtures shared from tests/realtime and tests/cache are parameters here
"""Week 50 red-team review, round 9: the response cache, batches and files, the kill switch, realtime and
the leaked-key scanner. Each test of a hole asserts the secure behaviour and failed while it was open; the
others pin what held."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import websockets

from keyplane.testing.fake_realtime import FakeRealtime
from tests.realtime.conftest import (  # noqa: F401 - fake_rt: the fixture, shared
    PRICED,
    TEST_MODEL,
    UPSTREAM_KEY_ENV,
    admin,
    fake_rt,
)
from tests.redteam.test_wk49_round4 import _client, _limit, _project
from tests.support import Gateways, RunningServer


@pytest.fixture
def rt_gw(gateways: Gateways, fake_rt: FakeRealtime):
    """A gateway routed to the fake realtime upstream (tests/realtime/conftest.py's, under another name: the
    red team's make_gw needs tests/proxy's make_gateway)."""

    def make(extra: str = "") -> RunningServer:
        return gateways.start(
            f'[[upstreams]]\nname = "fake"\nbase_url = "{fake_rt.base_url}"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n'
            'models = ["gpt-*"]\n\n' + PRICED + extra
        )

    return make


PROBE_RULE = """
[[guard.rules]]
name = "probe"
kind = "error_spike"
window = "10m"
threshold = 0.5
min_volume = 5
statuses = [403]
mode = "suspend"
cooldown = "1h"
"""


def _ws_url(srv: RunningServer, model: str = TEST_MODEL) -> str:
    return srv.base_url.replace("http://", "ws://") + f"/v1/realtime?model={model}"


def _new_key(srv: RunningServer, permissions: Any) -> dict[str, Any]:
    return admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "k", "permissions": permissions})


async def _refused_connect(url: str, key: str) -> int:
    try:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=10):
            return 101
    except websockets.exceptions.InvalidStatus as e:
        return e.response.status_code


# --- 3. the kill switch: realtime refusals are not watched ------------------------------------------------


def test_realtime_handshake_refusals_count_for_the_kill_switch(rt_gw):
    srv = rt_gw(PROBE_RULE)
    key = _new_key(srv, ["api.model.read"])  # no api.model.request: every realtime session is refused 403
    guard = srv.app.runtime.features.guard
    for _ in range(8):
        assert asyncio.run(_refused_connect(_ws_url(srv), key["value"])) == 403
    srv.call(guard.drain())
    entry = srv.app.runtime.snapshot.keys_by_id[key["id"]]
    assert entry.suspended_at is not None, "8 of 8 requests refused 403 in 10 minutes: the probe rule must fire"


def test_held_http_refusals_count_for_the_kill_switch(rt_gw):
    """The control: the same key probing over HTTP is suspended by the same rule."""
    srv = rt_gw(PROBE_RULE)
    key = _new_key(srv, ["api.model.read"])
    guard = srv.app.runtime.features.guard
    for _ in range(8):
        r = httpx.post(
            srv.v1 + "/chat/completions",
            json={"model": TEST_MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key['value']}"},
        )
        assert r.status_code in (401, 403), r.text
    srv.call(guard.drain())
    entry = srv.app.runtime.snapshot.keys_by_id[key["id"]]
    assert entry.suspended_at is not None


# --- 2. batches: a batch input line that repeats a key is priced at one reading ----------------------------

_DUP_LINE = (
    b'{"custom_id":"r-1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini",'
    b'"messages":[{"role":"user","content":"hi"}],"max_tokens":16000,"max_tokens":1}}'
)
# gpt-4o-mini: $0.60 per 1M output tokens, half in a batch: what 16,000 output tokens cost, in micro-dollars.
_FIRST_READING_MICROS = 16000 * 600_000 // 1_000_000 // 2


def test_held_a_synchronous_body_repeating_the_output_limit_is_refused(make_gw, fake):
    """The control (round 8): the same request sent on its own is refused before any upstream call."""
    srv = make_gw()
    pid, key = _project(srv)
    _limit(srv, pid, 100)
    body = _DUP_LINE[_DUP_LINE.index(b'"body":') + 7 : -1]
    r = httpx.post(
        srv.v1 + "/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert fake.model_requests() == []


def test_a_batch_line_repeating_its_output_limit_is_not_reserved_at_the_smaller_reading(make_gw, fake):
    srv = make_gw()
    pid, key = _project(srv)
    _limit(srv, pid, 100)  # money controls apply; no model or hosted tool policy
    c = _client(srv, key)
    f = c.files.create(file=("in.jsonl", _DUP_LINE + b"\n"), purpose="batch")
    r = httpx.post(
        srv.v1 + "/batches",
        json={"input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        headers={"Authorization": f"Bearer {key}"},
    )
    if r.status_code >= 400:
        return  # refused as the synchronous request is: secure
    est = srv.call(srv.app.runtime.features.batches.file_estimate(f.id, pid))
    assert est.cost >= _FIRST_READING_MICROS, (
        f"reserved {est.cost} micro-dollars for a line a first-value parser runs for {_FIRST_READING_MICROS}"
    )


# --- 1. the response cache ------------------------------------------------------------------------------

_CACHE = '\n[cache]\norg_wide_projects = ["Default project", "shared"]\nttl = "10m"\n'


def _ask(srv: RunningServer, key: str) -> httpx.Response:
    r = httpx.post(
        srv.v1 + "/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "temperature": 0,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "q"}],
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    return r


def test_a_cache_hit_carries_its_own_request_id_not_the_fillers(make_gw, fake):
    srv = make_gw(_CACHE)
    shared = admin(srv, "POST", "/projects", {"name": "shared"})
    other = admin(srv, "POST", f"/projects/{shared['id']}/api_keys", {"name": "k"})["value"]
    first = _ask(srv, srv.api_key)
    hit = _ask(srv, other)
    assert (first.headers["x-keyplane-cache"], hit.headers["x-keyplane-cache"]) == ("miss", "hit")
    filler = first.headers["x-keyplane-request-id"]
    ids = hit.headers.get_list("x-keyplane-request-id")
    assert filler not in ids, f"the hit (project {shared['id']}) carries the other project's request id {filler}"
    assert len(ids) == 1 and ids[0] == hit.headers["x-request-id"]


def test_held_a_cache_hit_is_refused_to_a_revoked_key_and_across_namespaces(make_gw, fake):
    """A hit is served only after authentication, and only within its namespace: a revoked key gets its 401,
    a project outside the organization-wide list fills its own entry."""
    srv = make_gw(_CACHE)
    key = admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "leaky"})
    alone = admin(srv, "POST", "/projects", {"name": "alone"})
    alone_key = admin(srv, "POST", f"/projects/{alone['id']}/api_keys", {"name": "k"})["value"]
    assert _ask(srv, key["value"]).headers["x-keyplane-cache"] == "miss"
    admin(srv, "DELETE", f"/projects/{srv.project_id}/api_keys/{key['id']}")
    r = httpx.post(
        srv.v1 + "/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "temperature": 0,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "q"}],
        },
        headers={"Authorization": f"Bearer {key['value']}"},
    )
    assert r.status_code == 401, r.text
    assert "x-keyplane-cache" not in _ask(srv, alone_key).headers  # not opted in: never reads the shared entry
    assert len(fake.model_requests()) == 2


def test_a_batch_line_naming_a_key_in_two_cases_is_priced_neither_way():
    """The batch form of round 8's case-insensitive keys: a line whose body (or a message in it) names a key in
    two cases is not priced, so it is refused under money controls, like the same body sent on its own."""
    from keyplane.billing.batch_input import estimate
    from keyplane.billing.prices import PriceTable

    t = PriceTable.from_config({})
    for body in (
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":1,"MAX_TOKENS":16000}',
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x","CONTENT":"long"}],"max_tokens":1}',
    ):
        line = b'{"custom_id":"r-1","method":"POST","url":"/v1/chat/completions","body":' + body + b"}\n"
        e = estimate(t, line, 4096)
        assert e.cost is None and "case-insensitive" in (e.why or ""), e.why
