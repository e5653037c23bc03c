"""Usage tiers: promoted automatically when the amount paid and the days since first payment pass
a threshold (the clock is injected: no sleeping)."""

from __future__ import annotations

from keyplane.billing.tiers import DEFAULT_TIERS, Standing, TierTable
from keyplane.clock import FakeClock
from tests.billing.conftest import admin_http, admin_sdk

DAY = 86_400


def test_qualification_rules():
    t = TierTable(DEFAULT_TIERS)
    now = 1_800_000_000
    assert t.qualified(Standing(0, None), now).name == "free"
    assert t.qualified(Standing(500, now), now).name == "tier-1"
    assert t.qualified(Standing(5_000, now), now).name == "tier-1"  # $50 paid, but not 7 days yet
    assert t.qualified(Standing(5_000, now - 7 * DAY), now).name == "tier-2"
    assert t.qualified(Standing(100_000, now - 29 * DAY), now).name == "tier-4"
    assert t.qualified(Standing(100_000, now - 30 * DAY), now).name == "tier-5"
    assert t.limits("tier-2", "gpt-4o-mini") == (5_000, 10_000_000, 0, 0)


def test_promotion_with_an_injected_clock(make_gateway):
    clock = FakeClock(1_800_000_000.0)
    srv = make_gateway(clock=clock)
    pid = srv.project_id
    h = admin_http(srv)
    rl = admin_sdk(srv).admin.organization.projects.rate_limits
    assert h.get("/usage_tier").json()["name"] == "free"
    h.post("/credit_grants", json={"amount": 5_000})  # $50: tier 1 at once, tier 2 after 7 days
    t = h.get("/usage_tier").json()
    assert (t["name"], t["paid"], t["days_since_first_payment"]) == ("tier-1", 5_000, 0)
    assert t["next"] == {"name": "tier-2", "min_paid": 5_000, "min_days": 7}
    limits = {x.id: x for x in rl.list_rate_limits(pid)}
    assert limits["rl-gpt-4o-mini"].max_requests_per_1_minute == 1_000
    clock.advance(6 * DAY)
    assert h.get("/usage_tier").json()["name"] == "tier-1"
    clock.advance(DAY)
    t = h.get("/usage_tier").json()
    assert (t["name"], t["days_since_first_payment"], t["since"]) == ("tier-2", 7, int(clock.now()))
    entries = h.get("/audit_logs", params={"event_types[]": "usage_tier.promoted"}).json()["data"]
    assert [e["usage_tier.promoted"]["to"] for e in entries] == ["tier-2", "tier-1"]
    assert entries[0]["usage_tier.promoted"]["from"] == "tier-1" and entries[0]["actor"]["type"] == "system"
    # the new defaults apply at once, to the rate-limit objects and to the requests
    limits = {x.id: x for x in rl.list_rate_limits(pid)}
    assert limits["rl-gpt-4o-mini"].max_requests_per_1_minute == 5_000
    r = __import__("httpx").post(
        srv.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {srv.api_key}"},
        json={"model": "demo-echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.headers["x-ratelimit-limit-requests"] == "5000"
    h.close()


def test_pinned_tier(make_gateway):
    srv = make_gateway('[limits]\ntier = "tier-3"\n')
    with admin_http(srv) as h:
        h.post("/credit_grants", json={"amount": 10_000_000})
        t = h.get("/usage_tier").json()
    assert t["name"] == "tier-3" and t["pinned"]
