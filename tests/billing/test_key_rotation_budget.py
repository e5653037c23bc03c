"""A key's own spend limit and rate limits hold across its rotation (red team round 16, left open there): the new
value keeps the key's limits, and the old and new values count against one spend counter and one rate-limit
bucket, the line's (KeyEntry.budget_id), during the grace period and after it, in memory and in the ledger a
restart reads. A suspended key is not rotated (its new value would be an active key: the kill switch bypassed)."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI
from sqlalchemy import select

from keyplane.billing.models import SpendLedger
from tests.billing.conftest import COST, admin_http, billing_of, flush, new_key

LIMIT = {"currency": "USD", "interval": "month"}


def _chat(srv, key: str) -> None:
    OpenAI(base_url=srv.v1, api_key=key, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )


def _rotate(srv, kid: str, grace: int) -> dict:
    with admin_http(srv) as h:
        r = h.post(f"/projects/{srv.project_id}/api_keys/{kid}/rotate", json={"grace_period_seconds": grace})
        assert r.status_code == 200, r.text
        return r.json()


def test_a_rotated_keys_spend_limit_is_kept_and_shared_by_its_old_and_new_values(make_gateway):
    srv = make_gateway()
    k = new_key(srv, "rotated")
    with admin_http(srv) as h:  # 3 requests' worth: 2.4 cents; the limit is in cents
        r = h.post(f"/projects/{srv.project_id}/api_keys/{k['id']}/spend_limit", json={**LIMIT, "threshold_amount": 3})
        assert r.status_code == 200, r.text
    _chat(srv, k["value"])  # 0.8 cents on the old value
    new = _rotate(srv, k["id"], grace=3600)
    assert new["id"] != k["id"]
    with admin_http(srv) as h:  # the new value shows the key's limit, and what the line spent so far
        got = h.get(f"/projects/{srv.project_id}/api_keys/{new['id']}/spend_limit").json()
    assert got["threshold_amount"] == 3 and got["spent"] == 1, got
    _chat(srv, new["value"])  # 1.6 cents
    _chat(srv, k["value"])  # 2.4 cents: the old value, in its grace period, counts against the same limit
    for value in (new["value"], k["value"]):  # 3.2 cents would pass 3: both refused
        with pytest.raises(openai.RateLimitError) as e:
            _chat(srv, value)
        assert e.value.code == "api_key_spend_limit_exceeded", e.value.body
    b = billing_of(srv)
    assert srv.call(b.spent("api_key", new["id"]))[0] == 3 * COST
    assert srv.call(b.spent("api_key", k["id"]))[0] == 3 * COST
    flush(srv)  # the ledger (what a restart seeds the counters from) holds the line's spend under its first key

    async def rows() -> dict[str, int]:
        async with srv.app.runtime.sessions() as s:
            got = await s.execute(
                select(SpendLedger.scope_id, SpendLedger.micros).where(SpendLedger.scope == "api_key")
            )
            return dict(got.all())

    assert srv.call(rows()) == {k["id"]: 3 * COST}


def test_a_rotated_keys_rate_limits_are_kept_and_shared(make_gateway):
    srv = make_gateway()
    k = new_key(srv, "rate limited")
    with admin_http(srv) as h:
        r = h.post(
            f"/projects/{srv.project_id}/api_keys/{k['id']}/rate_limits/rl-gpt-4o-mini",
            json={"max_requests_per_1_day": 2},
        )
        assert r.status_code == 200, r.text
    _chat(srv, k["value"])
    new = _rotate(srv, k["id"], grace=3600)
    with admin_http(srv) as h:
        listed = h.get(f"/projects/{srv.project_id}/api_keys/{new['id']}/rate_limits").json()["data"]
    assert [x["max_requests_per_1_day"] for x in listed if x["model"] == "gpt-4o-mini"] == [2]
    _chat(srv, new["value"])  # the line's second request of the day
    for value in (new["value"], k["value"]):
        with pytest.raises(openai.RateLimitError) as e:
            _chat(srv, value)
        assert e.value.code == "rate_limit_exceeded", e.value.body


def test_a_suspended_key_is_not_rotated(make_gateway):
    srv = make_gateway()
    k = new_key(srv, "suspended")
    with admin_http(srv) as h:
        assert h.post(f"/projects/{srv.project_id}/api_keys/{k['id']}/suspend").status_code == 200
        r = h.post(f"/projects/{srv.project_id}/api_keys/{k['id']}/rotate", json={})
    assert r.status_code == 400 and r.json()["error"]["code"] == "key_suspended", r.text
    with pytest.raises(openai.AuthenticationError):
        _chat(srv, k["value"])
