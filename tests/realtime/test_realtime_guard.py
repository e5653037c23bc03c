"""The kill switch sees Realtime traffic (issue 17: "the kill switch sees the traffic" for every endpoint): each
response a session settles is observed like a chat completion, so a cost ceiling trips on realtime spend alone,
suspends the key, and a session the key opens next is refused before any upstream connection."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from tests.realtime.conftest import COST, TEST_MODEL
from tests.realtime.test_realtime import _responses

# A cost ceiling of $0.02 per hour on the key: three responses at $0.008 each cross it.
GUARD = (
    '\n[[guard.rules]]\nname = "realtime-ceiling"\nkind = "ceiling"\nscope = "key"\nwindow = "1h"\n'
    'threshold = 0.02\nmetric = "cost_usd"\nmode = "suspend"\n'
)


def test_a_cost_ceiling_trips_on_realtime_responses_and_suspends_the_key(make_gateway, fake_rt):
    srv = make_gateway(GUARD)
    assert 3 * COST > 20_000 > 2 * COST  # micro-dollars: the third response crosses the ceiling
    events = asyncio.run(_responses(srv, srv.api_key, TEST_MODEL, 2))
    assert [e.type for e in events] == ["response.done"] * 2
    guard = srv.app.runtime.features.guard
    srv.call(guard.drain())
    assert srv.app.runtime.snapshot.keys_by_id[srv.init["api_key_id"]].suspended_at is None  # $0.016: under
    events = asyncio.run(_responses(srv, srv.api_key, TEST_MODEL, 1))
    assert [e.type for e in events] == ["response.done"]
    srv.call(guard.drain())
    entry = srv.app.runtime.snapshot.keys_by_id[srv.init["api_key_id"]]
    assert entry.suspended_at is not None, "three realtime responses ($0.024) did not trip a $0.02 ceiling"
    opened_before = len(fake_rt.of_type("response.create"))
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:  # the handshake itself: 401
        asyncio.run(_responses(srv, srv.api_key, TEST_MODEL, 1))
    assert refused.value.response.status_code == 401
    assert len(fake_rt.of_type("response.create")) == opened_before  # nothing reached the upstream
