"""Control-plane writes take their time from the runtime's injected clock (keyplane.control.base.now_s)."""

from __future__ import annotations

import httpx

from keyplane.clock import FakeClock


def test_admin_writes_are_stamped_by_the_injected_clock(database_url, gateways):
    clock = FakeClock(start=1_900_000_000.0)
    srv = gateways.start(clock=clock, store=database_url)
    h = {"Authorization": f"Bearer {srv.admin_key}"}
    org = srv.v1 + "/organization"
    p = httpx.post(org + "/projects", headers=h, json={"name": "clocked"}).json()
    assert p["created_at"] == 1_900_000_000
    clock.advance(3600)
    k = httpx.post(f"{org}/projects/{p['id']}/api_keys", headers=h, json={"name": "k", "expires_in_seconds": 60}).json()
    assert k["created_at"] == 1_900_003_600 and k["expires_at"] == 1_900_003_660
    clock.advance(120)  # expired on the runtime's clock: refused, without waiting in real time
    r = httpx.post(
        srv.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {k['value']}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 401
    audit = httpx.get(org + "/audit_logs", headers=h, params={"limit": 100}).json()["data"]
    times = {(e["type"], (e.get(e["type"]) or {}).get("id")): e["effective_at"] for e in audit}
    assert times[("project.created", p["id"])] == 1_900_000_000
    assert times[("api_key.created", k["id"])] == 1_900_003_600
