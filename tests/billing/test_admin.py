"""The admin endpoints of limits and billing, parsed by the official SDK's types where it has them.

Bad input gets an OpenAI-shaped 400/404 and changes nothing (no row, no audit entry).
"""

from __future__ import annotations

import openai
import pytest
from openai.types.admin.organization import OrganizationSpendAlert, OrganizationSpendLimit
from openai.types.admin.organization.projects import ProjectRateLimit, ProjectSpendAlert, ProjectSpendLimit

LIMIT = {"currency": "USD", "interval": "month"}
EMAIL = {"type": "email", "recipients": ["ops@example.com"]}


def _audit(http) -> list[dict]:
    return http.get("/audit_logs", params={"limit": 100}).json()["data"]


def _unchanged(http, before: list[dict]) -> None:
    assert _audit(http) == before


def _key(http, pid: str) -> dict:
    r = http.post(f"/projects/{pid}/api_keys", json={"name": "k"})
    assert r.status_code == 200
    return r.json()


# --- credit ------------------------------------------------------------------------------------


def test_credit_grants_and_balance(http, server):
    assert http.get("/credit_balance").json() == {
        "object": "organization.credit_balance",
        "currency": "usd",
        "granted": 0,
        "used": 0,
        "available": 0,
        "expired": 0,
        "reserved": 0,
        "enforced": False,
        "used_micros": 0,
        "available_micros": 0,
    }
    g = http.post("/credit_grants", json={"amount": 2500, "currency": "usd", "note": "first"}).json()
    assert g["object"] == "organization.credit_grant" and g["id"].startswith("cg_")
    assert (g["amount"], g["currency"], g["note"], g["expires_at"]) == (2500, "usd", "first", None)
    assert g["created_at"] > 0
    g2 = http.post("/credit_grants", json={"amount": 100, "expires_at": g["created_at"] + 86400}).json()
    page = http.get("/credit_grants", params={"limit": 1}).json()
    assert page["object"] == "list" and [x["id"] for x in page["data"]] == [g["id"]] and page["has_more"]
    page = http.get("/credit_grants", params={"after": g["id"]}).json()
    assert [x["id"] for x in page["data"]] == [g2["id"]] and not page["has_more"]
    b = http.get("/credit_balance").json()
    assert (b["granted"], b["used"], b["available"], b["enforced"]) == (2600, 0, 2600, True)
    types = [e["type"] for e in _audit(http)[:3]]
    assert "credit_grant.created" in types and "usage_tier.promoted" in types


@pytest.mark.parametrize(
    "body,param",
    [
        ({"amount": -5}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": "10"}, "amount"),
        ({"amount": 1.5}, "amount"),
        ({}, "amount"),
        ({"amount": 10, "currency": "eur"}, "currency"),
        ({"amount": 10, "expires_at": 1}, "expires_at"),
        ({"amount": 10, "note": 5}, "note"),
        ({"amount": 10, "bogus": 1}, "bogus"),
        ({"amount": True}, "amount"),
    ],
)
def test_bad_credit_grants_change_nothing(http, body, param):
    before = _audit(http)
    r = http.post("/credit_grants", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert http.get("/credit_grants").json()["data"] == []
    _unchanged(http, before)


# --- spend limits ------------------------------------------------------------------------------


def test_organization_spend_limit(admin, http):
    sl = admin.admin.organization.spend_limit
    with pytest.raises(openai.NotFoundError):
        sl.retrieve()
    got = sl.update(currency="USD", interval="month", threshold_amount=50_000)
    assert isinstance(got, OrganizationSpendLimit)
    assert (got.object, got.threshold_amount, got.currency, got.interval) == (
        "organization.spend_limit",
        50_000,
        "USD",
        "month",
    )
    assert got.enforcement.status == "enforcing"
    assert sl.retrieve().threshold_amount == 50_000
    deleted = sl.delete()
    assert deleted.object == "organization.spend_limit.deleted" and deleted.deleted
    with pytest.raises(openai.NotFoundError):
        sl.delete()
    types = [e["type"] for e in _audit(http)[:2]]
    assert types == ["spend_limit.deleted", "spend_limit.updated"]


def test_project_and_key_spend_limits(admin, http, server):
    pid = server.project_id
    sl = admin.admin.organization.projects.spend_limit
    got = sl.update(pid, currency="USD", interval="month", threshold_amount=1234)
    assert isinstance(got, ProjectSpendLimit) and got.object == "project.spend_limit"
    assert sl.retrieve(pid).threshold_amount == 1234
    # keyplane: a limit kept but not enforced
    r = http.post(
        f"/projects/{pid}/spend_limit", json={**LIMIT, "threshold_amount": 99, "enforcement": {"status": "inactive"}}
    )
    assert r.json()["enforcement"] == {"status": "inactive"}
    assert sl.delete(pid).object == "project.spend_limit.deleted"
    k = _key(http, pid)
    path = f"/projects/{pid}/api_keys/{k['id']}/spend_limit"
    assert http.get(path).status_code == 404
    r = http.post(path, json={**LIMIT, "threshold_amount": 500})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "api_key.spend_limit" and body["threshold_amount"] == 500 and body["spent"] == 0
    assert http.delete(path).json() == {"object": "api_key.spend_limit.deleted", "deleted": True}


@pytest.mark.parametrize(
    "path,body,status,param",
    [
        ("/projects/{pid}/spend_limit", {**LIMIT, "threshold_amount": -1}, 400, "threshold_amount"),
        ("/projects/{pid}/spend_limit", {**LIMIT, "threshold_amount": "5"}, 400, "threshold_amount"),
        ("/projects/{pid}/spend_limit", {**LIMIT}, 400, "threshold_amount"),
        ("/projects/{pid}/spend_limit", {**LIMIT, "currency": "EUR", "threshold_amount": 5}, 400, "currency"),
        ("/projects/{pid}/spend_limit", {**LIMIT, "interval": "week", "threshold_amount": 5}, 400, "interval"),
        (
            "/projects/{pid}/spend_limit",
            {**LIMIT, "threshold_amount": 5, "enforcement": {"status": "x"}},
            400,
            "enforcement",
        ),
        ("/projects/proj_nope/spend_limit", {**LIMIT, "threshold_amount": 5}, 404, None),
        ("/projects/{pid}/api_keys/key_nope/spend_limit", {**LIMIT, "threshold_amount": 5}, 404, None),
        ("/spend_limit", {**LIMIT, "threshold_amount": None}, 400, "threshold_amount"),
    ],
)
def test_bad_spend_limits_change_nothing(http, server, path, body, status, param):
    before = _audit(http)
    r = http.post(path.format(pid=server.project_id), json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param:
        assert err["param"] == param
    assert http.get(f"/projects/{server.project_id}/spend_limit").status_code == 404
    assert http.get("/spend_limit").status_code == 404
    _unchanged(http, before)


# --- spend alerts ------------------------------------------------------------------------------


def test_spend_alerts(admin, http, server):
    pid = server.project_id
    org = admin.admin.organization.spend_alerts
    a = org.create(currency="USD", interval="month", threshold_amount=10_000, notification_channel=EMAIL)
    assert isinstance(a, OrganizationSpendAlert) and a.object == "organization.spend_alert"
    assert a.notification_channel.recipients == ["ops@example.com"] and a.threshold_amount == 10_000
    assert org.retrieve(a.id).id == a.id
    up = org.update(
        a.id,
        currency="USD",
        interval="month",
        threshold_amount=20_000,
        notification_channel={**EMAIL, "subject_prefix": "[acme]"},
    )
    assert up.threshold_amount == 20_000 and up.notification_channel.subject_prefix == "[acme]"
    assert [x.id for x in org.list()] == [a.id]
    d = org.delete(a.id)
    assert d.object == "organization.spend_alert.deleted" and d.deleted and d.id == a.id
    prj = admin.admin.organization.projects.spend_alerts
    made = [
        prj.create(pid, currency="USD", interval="month", threshold_amount=100 * i, notification_channel=EMAIL)
        for i in range(1, 4)
    ]
    assert all(isinstance(x, ProjectSpendAlert) and x.object == "project.spend_alert" for x in made)
    page = prj.list(pid, limit=2)
    assert [x.id for x in page.data] == [m.id for m in made[:2]] and page.has_more
    assert [x.id for x in prj.list(pid, limit=2)] == [m.id for m in made]  # auto-pagination
    assert [x.id for x in prj.list(pid, order="desc")] == [m.id for m in reversed(made)]
    assert prj.retrieve(made[0].id, project_id=pid).threshold_amount == 100
    assert prj.delete(made[0].id, project_id=pid).object == "project.spend_alert.deleted"
    with pytest.raises(openai.NotFoundError):
        prj.retrieve(made[0].id, project_id=pid)
    with pytest.raises(openai.NotFoundError):  # an organization alert is not a project's
        org.retrieve(made[1].id)


@pytest.mark.parametrize(
    "channel",
    [
        None,
        {"type": "sms", "recipients": ["a@b.c"]},
        {"type": "email", "recipients": []},
        {"type": "email", "recipients": ["not-an-email"]},
        {"type": "email"},
    ],
)
def test_bad_spend_alerts_change_nothing(http, server, channel):
    before = _audit(http)
    body = {**LIMIT, "threshold_amount": 5}
    if channel is not None:
        body["notification_channel"] = channel
    r = http.post(f"/projects/{server.project_id}/spend_alerts", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "notification_channel"
    assert http.get(f"/projects/{server.project_id}/spend_alerts").json()["data"] == []
    _unchanged(http, before)


# --- rate limits -------------------------------------------------------------------------------


def test_project_rate_limits(admin, http, server):
    pid = server.project_id
    rl = admin.admin.organization.projects.rate_limits
    items = list(rl.list_rate_limits(pid))
    assert all(isinstance(x, ProjectRateLimit) and x.object == "project.rate_limit" for x in items)
    by_id = {x.id: x for x in items}
    # every model the configured upstreams serve: demo-echo, and the known names their globs match
    for m in ("demo-echo", "gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3-mini", "text-embedding-3-small"):
        assert f"rl-{m}" in by_id
    assert by_id["rl-gpt-4o-mini"].max_requests_per_1_minute == 500  # the free tier's default
    page = rl.list_rate_limits(pid, limit=2)
    assert len(page.data) == 2 and page.has_more
    got = rl.update_rate_limit(
        "rl-gpt-4o-mini", project_id=pid, max_requests_per_1_minute=60, max_requests_per_1_day=1000
    )
    assert isinstance(got, ProjectRateLimit)
    assert (got.max_requests_per_1_minute, got.max_tokens_per_1_minute, got.max_requests_per_1_day) == (
        60,
        2_000_000,
        1000,
    )
    r = http.post(f"/projects/{pid}/rate_limits/rl-gpt-4o-mini", json={"max_tokens_per_1_day": 10_000})
    assert r.json()["max_tokens_per_1_day"] == 10_000 and r.json()["max_requests_per_1_minute"] == 60
    entry = _audit(http)[0]
    assert entry["type"] == "rate_limit.updated"
    assert entry["rate_limit.updated"] == {
        "id": "rl-gpt-4o-mini",
        "changes_requested": {"max_tokens_per_1_day": 10_000},
    }
    r = http.delete(f"/projects/{pid}/rate_limits/rl-gpt-4o-mini")
    assert r.json()["max_requests_per_1_minute"] == 500 and _audit(http)[0]["type"] == "rate_limit.deleted"


def test_key_rate_limits(http, server):
    pid = server.project_id
    k = _key(http, pid)
    base = f"/projects/{pid}/api_keys/{k['id']}/rate_limits"
    items = http.get(base).json()["data"]
    assert items and all(x["object"] == "api_key.rate_limit" and x["max_requests_per_1_minute"] == 0 for x in items)
    r = http.post(f"{base}/rl-demo-echo", json={"max_requests_per_1_minute": 5})
    assert r.status_code == 200 and r.json()["max_requests_per_1_minute"] == 5
    assert _audit(http)[0]["rate_limit.updated"]["api_key_id"] == k["id"]
    got = {x["id"]: x for x in http.get(base).json()["data"]}
    assert got["rl-demo-echo"]["max_requests_per_1_minute"] == 5


@pytest.mark.parametrize(
    "path,body,status,param",
    [
        (
            "/projects/{pid}/rate_limits/rl-gpt-4o-mini",
            {"max_requests_per_1_minute": -1},
            400,
            "max_requests_per_1_minute",
        ),
        (
            "/projects/{pid}/rate_limits/rl-gpt-4o-mini",
            {"max_requests_per_1_minute": "5"},
            400,
            "max_requests_per_1_minute",
        ),
        ("/projects/{pid}/rate_limits/rl-gpt-4o-mini", {}, 400, None),
        ("/projects/{pid}/rate_limits/rl-gpt-4o-mini", {"max_bananas": 3}, 400, "max_bananas"),
        ("/projects/{pid}/rate_limits/rl-no-such-model", {"max_requests_per_1_minute": 5}, 404, "rate_limit_id"),
        ("/projects/proj_nope/rate_limits/rl-gpt-4o-mini", {"max_requests_per_1_minute": 5}, 404, None),
        ("/projects/{pid}/api_keys/key_nope/rate_limits/rl-gpt-4o-mini", {"max_requests_per_1_minute": 5}, 404, None),
    ],
)
def test_bad_rate_limits_change_nothing(http, server, path, body, status, param):
    before = _audit(http)
    r = http.post(path.format(pid=server.project_id), json=body)
    assert r.status_code == status, r.text
    if param:
        assert r.json()["error"]["param"] == param
    got = {x["id"]: x for x in http.get(f"/projects/{server.project_id}/rate_limits").json()["data"]}
    assert got["rl-gpt-4o-mini"]["max_requests_per_1_minute"] == 500
    _unchanged(http, before)


def test_sdk_errors_are_openai_shaped(admin, server):
    with pytest.raises(openai.BadRequestError) as e:
        admin.admin.organization.projects.spend_limit.update(
            server.project_id, currency="USD", interval="month", threshold_amount=-1
        )
    assert e.value.code == "invalid_value" and e.value.param == "threshold_amount"
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.projects.rate_limits.update_rate_limit(
            "rl-x", project_id=server.project_id, max_requests_per_1_minute=1
        )


def test_usage_tier_and_prices(http):
    t = http.get("/usage_tier").json()
    assert t["object"] == "organization.usage_tier" and t["name"] == "free" and t["next"]["name"] == "tier-1"
    prices = {p["model"]: p for p in http.get("/prices").json()["data"]}
    assert prices["gpt-4o-mini"] == {
        "object": "keyplane.price",
        "id": "gpt-4o-mini",
        "model": "gpt-4o-mini",
        "input": 0.15,
        "cached_input": 0.075,
        "output": 0.6,
    }
    assert prices["gpt-image-1"]["image_input"] == 10 and "image_input" not in prices["gpt-4o-mini"]
