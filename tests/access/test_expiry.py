"""key.expiring notices: 7, 3 and 1 days before a key expires, each once per threshold, once per fleet
(the claim row decides), never for revoked keys; on SQLite and PostgreSQL, with an injected clock."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from keyplane import alerts
from keyplane.access.expiry import DAY, ExpiryNotifier
from keyplane.clock import FakeClock
from tests.proxy.conftest import admin, new_key, wait_for
from tests.support import Gateways, RunningServer


class CaptureSink:
    type = "capture"
    name = "capture"
    events = ["key.*"]

    def __init__(self) -> None:
        self.got: list[alerts.Alert] = []

    async def send(self, alert: alerts.Alert, http: object) -> None:
        self.got.append(alert)


@pytest.fixture
def srv(database_url: str, gateways: Gateways) -> Iterator[tuple[RunningServer, FakeClock, CaptureSink]]:
    clock = FakeClock(time.time())
    s = gateways.start(clock=clock, store=database_url)
    sink = CaptureSink()
    s.app.runtime.features.alerts = alerts.Dispatcher([sink])
    yield s, clock, sink
    gateways.stop_all()  # before the test's PostgreSQL database is dropped


def _check(s: RunningServer, notifier: ExpiryNotifier | None = None) -> int:
    n = notifier or s.app.runtime.features.access_expiry

    async def run() -> int:
        sent = await n.check()
        await alerts.for_runtime(s.app.runtime).drain()
        return sent

    return s.call(run())


def test_expiry_notices(srv):
    s, clock, sink = srv
    rt = s.app.runtime
    k = new_key(s, expires_in_seconds=10 * DAY)
    short = new_key(s, expires_in_seconds=2 * DAY)
    gone = new_key(s, expires_in_seconds=2 * DAY)
    admin(s, "DELETE", f"/projects/{s.project_id}/api_keys/{gone['id']}")
    wait_for(
        lambda: (
            k["id"] in rt.snapshot.keys_by_id
            and short["id"] in rt.snapshot.keys_by_id
            and (gone["id"] not in rt.snapshot.keys_by_id or rt.snapshot.keys_by_id[gone["id"]].revoked_at)
        )
    )

    assert _check(s) == 1  # only the 2-day key: one notice, for the nearest threshold crossed (3 days)
    assert [(a.event, a.details["key"]["id"], a.details["threshold_days"]) for a in sink.got] == [
        ("key.expiring", short["id"], 3)
    ]
    assert _check(s) == 0  # once per threshold

    clock.advance(1.25 * DAY)  # 0.75 day left on the short key, 8.75 on k
    assert _check(s) == 1
    assert (sink.got[-1].details["key"]["id"], sink.got[-1].details["threshold_days"]) == (short["id"], 1)

    clock.advance(2 * DAY)  # 6.75 days left on k; the short key has expired: nothing more for it
    assert _check(s) == 1
    assert (sink.got[-1].details["key"]["id"], sink.got[-1].details["threshold_days"]) == (k["id"], 7)
    # A second instance of the fleet (its own memory, the same store) sends none of these again.
    assert _check(s, ExpiryNotifier(rt)) == 0

    clock.advance(4 * DAY)  # 2.75 days left on k
    before = len(sink.got)
    assert _check(s) == 1
    assert sink.got[before].details["threshold_days"] == 3 and sink.got[before].severity == "warning"
    clock.advance(2 * DAY)  # 0.75 day left
    assert _check(s) == 1 and sink.got[-1].details["threshold_days"] == 1
    assert _check(s) == 0
    assert len(sink.got) == 5
    assert all(a.details["key"]["id"] != gone["id"] for a in sink.got)
    assert "sk-kp-" not in str([a.summary for a in sink.got]).replace(short["redacted_value"], "").replace(
        k["redacted_value"], ""
    )
