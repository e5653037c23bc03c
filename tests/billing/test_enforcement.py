"""Budgets and rate limits enforced on real traffic, through the official SDK, on both backends."""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI, OpenAI

from keyplane.clock import FakeClock
from keyplane.limits import tokens
from keyplane.testing import Behaviour
from tests.billing.conftest import COST, admin_http, admin_sdk, billing_of, flush, new_key

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
LIMIT = {"currency": "USD", "interval": "month"}


async def _fire(base_url: str, key: str, n: int, body: dict | None = None) -> collections.Counter:
    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)

    async def one() -> str:
        try:
            await client.chat.completions.create(**(body or CHAT))
            return "ok"
        except openai.RateLimitError as e:
            return str(e.code)

    try:
        return collections.Counter(await asyncio.gather(*[one() for _ in range(n)]))
    finally:
        await client.close()


def _ledger(srv, key: str) -> int:
    from sqlalchemy import select

    from keyplane.billing.models import SpendLedger

    period, scope, sid = key.split(":", 2)

    async def q() -> int:
        async with srv.app.runtime.engine.connect() as c:
            v = (
                await c.execute(
                    select(SpendLedger.micros).where(
                        SpendLedger.period == period, SpendLedger.scope == scope, SpendLedger.scope_id == sid
                    )
                )
            ).scalar()
        return int(v or 0)

    return srv.call(q())


@pytest.mark.parametrize("kind", ["project", "credit", "api_key"])
def test_200_concurrent_requests_against_a_budget_for_50(make_gateway, fake, kind):
    srv = make_gateway()
    pid, key = srv.project_id, srv.api_key
    with admin_http(srv) as h:
        if kind == "project":
            r = h.post(f"/projects/{pid}/spend_limit", json={**LIMIT, "threshold_amount": 40})
        elif kind == "credit":
            r = h.post("/credit_grants", json={"amount": 40, "currency": "usd"})
        else:
            k = new_key(srv)
            key = k["value"]
            r = h.post(f"/projects/{pid}/api_keys/{k['id']}/spend_limit", json={**LIMIT, "threshold_amount": 40})
        assert r.status_code == 200, r.text
    counts = asyncio.run(_fire(srv.v1, key, 200))
    code = {
        "project": "project_spend_limit_exceeded",
        "credit": "insufficient_quota",
        "api_key": "api_key_spend_limit_exceeded",
    }[kind]
    assert counts == {"ok": 50, code: 150}
    assert len(fake.model_requests()) == 50  # the refused ones never reached the upstream
    b = billing_of(srv)
    budget = {
        "project": f"{b.period}:project:{pid}",
        "credit": b.credit_key,
        "api_key": f"{b.period}:api_key:{k['id'] if kind == 'api_key' else ''}",
    }
    if kind != "credit":
        spent, reserved = srv.call(b.spent(kind, k["id"] if kind == "api_key" else pid))
        assert (spent, reserved) == (50 * COST, 0)
    flush(srv)
    if kind == "credit":
        with admin_http(srv) as h:
            bal = h.get("/credit_balance").json()
        assert bal["used"] == 40 and bal["available"] == 0 and bal["used_micros"] == 50 * COST
    else:
        assert _ledger(srv, budget[kind]) == 50 * COST
    # the organization's own monthly spend saw exactly the same
    assert _ledger(srv, f"{b.period}:organization:{b.org_id}") == 50 * COST


def test_quota_errors_are_not_retried_by_the_sdk(make_gateway, fake):
    srv = make_gateway()
    with admin_http(srv) as h:
        assert h.post("/credit_grants", json={"amount": 1}).status_code == 200  # 10000 µ$: one request
    hits: list[int] = []
    client = OpenAI(
        base_url=srv.v1,
        api_key=srv.api_key,
        max_retries=2,
        http_client=httpx.Client(event_hooks={"response": [lambda r: hits.append(r.status_code)]}),
    )
    client.chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**CHAT)
    assert hits == [200, 429]  # one attempt, no retry
    err = e.value
    assert err.code == "insufficient_quota" and err.type == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"
    assert "exceeded your current quota" in err.message
    # a spend limit behaves the same, with its own code and a message naming the limit and its reset
    with admin_http(srv) as h:
        h.post("/credit_grants", json={"amount": 100})
        h.post(f"/projects/{srv.project_id}/spend_limit", json={**LIMIT, "threshold_amount": 1})
    hits.clear()
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**CHAT)
    assert hits == [429] and e.value.code == "project_spend_limit_exceeded"
    assert e.value.type == "insufficient_quota"
    msg = e.value.message
    assert "project spend limit of $0.01 per month" in msg and "Default project" in msg and "resets on" in msg


def test_sdk_retry_on_rate_limit_succeeds_after_the_advertised_wait(make_gateway):
    srv = make_gateway()
    pid = srv.project_id
    rl = admin_sdk(srv).admin.organization.projects.rate_limits.update_rate_limit(
        "rl-demo-echo", project_id=pid, max_requests_per_1_minute=30
    )
    assert rl.max_requests_per_1_minute == 30
    body = {**CHAT, "model": "demo-echo"}
    counts = asyncio.run(_fire(srv.v1, srv.api_key, 30, body))  # the whole burst at once
    assert counts == {"ok": 30}
    r = httpx.post(srv.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {srv.api_key}"})
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded"
    assert err["message"].startswith("Rate limit reached for demo-echo in project `Default project`")
    assert "on requests per min (RPM): Limit 30, Used 30, Requested 1. Please try again in " in err["message"]
    wait_ms = int(r.headers["retry-after-ms"])
    assert 0 < wait_ms <= 2000 and r.headers["retry-after"] in ("1", "2")
    assert r.headers["x-ratelimit-limit-requests"] == "30" and r.headers["x-ratelimit-remaining-requests"] == "0"
    hits: list[int] = []
    client = OpenAI(
        base_url=srv.v1,
        api_key=srv.api_key,
        max_retries=2,
        http_client=httpx.Client(event_hooks={"response": [lambda r: hits.append(r.status_code)]}),
    )
    t0 = time.monotonic()
    out = client.chat.completions.with_raw_response.create(**body)
    assert out.status_code == 200
    if hits[0] == 429:  # the usual case: the SDK waited what keyplane said, then got through
        assert hits == [429, 200] and time.monotonic() - t0 >= 0.2
    else:  # the burst itself took the whole window
        assert hits == [200]


def test_headers_on_every_response(gw):
    r = httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {gw.api_key}"})
    assert r.status_code == 200
    h = r.headers
    assert h["x-ratelimit-limit-requests"] == "500" and h["x-ratelimit-remaining-requests"] == "499"
    assert h["x-ratelimit-limit-tokens"] == "2000000"
    est = tokens.measure("/v1/chat/completions", "gpt-4o-mini", orjson.dumps(CHAT))[0] + 5
    assert int(h["x-ratelimit-remaining-tokens"]) == 2_000_000 - est
    assert h["x-ratelimit-reset-requests"] == "120ms"
    assert h["x-ratelimit-reset-tokens"].endswith("ms") or h["x-ratelimit-reset-tokens"].endswith("s")


def _usage_tokens(r: httpx.Response) -> int:
    u = r.json()["usage"]
    return int(u["prompt_tokens"]) + int(u["completion_tokens"])


@pytest.mark.parametrize("text", ["Hello from the fake upstream.", "word " * 60])
def test_tpm_upstream_never_sees_more_than_the_limit(make_gateway, fake, backend, text):
    """Sequentially at one instant: the tokens the upstream served stay within TPM plus one request's
    estimate error (when usage exceeds the estimate, the bucket is charged the difference)."""
    clock = None if backend else FakeClock(1_800_000_000.0)
    srv = make_gateway(clock=clock)
    admin_sdk(srv).admin.organization.projects.rate_limits.update_rate_limit(
        "rl-gpt-4o-mini", project_id=srv.project_id, max_tokens_per_1_minute=300
    )
    est = tokens.measure("/v1/chat/completions", "gpt-4o-mini", orjson.dumps(CHAT))[0] + 5
    seen = 0
    errors = []
    t0 = time.monotonic()
    with httpx.Client(headers={"Authorization": f"Bearer {srv.api_key}", "x-fake-text": text.strip()}) as c:
        for _ in range(200):
            r = c.post(srv.v1 + "/chat/completions", json=CHAT)
            if r.status_code == 429:
                assert r.json()["error"]["type"] == "tokens"
                break
            assert r.status_code == 200
            used = _usage_tokens(r)
            errors.append(max(0, used - est))
            seen += used
    refill = 0 if clock else int(300 * (time.monotonic() - t0) / 60) + 1
    assert seen <= 300 + max(errors) + refill
    assert seen >= 300 - est - 1 - max(errors)  # and the limit was actually usable
    if clock is not None:  # a minute later, one more minute's worth
        clock.advance(60)
        r = httpx.post(srv.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {srv.api_key}"})
        assert r.status_code == 200


def test_request_too_large(gw):
    admin_sdk(gw).admin.organization.projects.rate_limits.update_rate_limit(
        "rl-gpt-4o-mini", project_id=gw.project_id, max_tokens_per_1_minute=300
    )
    hits: list[int] = []
    client = OpenAI(
        base_url=gw.v1,
        api_key=gw.api_key,
        max_retries=2,
        http_client=httpx.Client(event_hooks={"response": [lambda r: hits.append(r.status_code)]}),
    )
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**{**CHAT, "max_tokens": 1000})
    assert hits == [429]
    assert e.value.type == "tokens" and e.value.code == "rate_limit_exceeded"
    assert e.value.body["message"].startswith("Request too large for gpt-4o-mini in project `Default project`")
    assert "on tokens per min (TPM): Limit 300, Requested 10" in e.value.message


def test_unpriced_model_is_refused_clearly(make_gateway, fake):
    srv = make_gateway()  # refused where money controls apply (served at cost 0 otherwise: test_spending.py)
    with admin_http(srv) as h:
        h.post(f"/projects/{srv.project_id}/spend_limit", json={**LIMIT, "threshold_amount": 100})
    with pytest.raises(openai.BadRequestError) as e:
        OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0).chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.code == "model_not_priced" and "fake-model" in e.value.message
    assert not fake.model_requests()
    srv2 = make_gateway("[prices.default]\ninput = 1\noutput = 2\n")
    r = OpenAI(base_url=srv2.v1, api_key=srv2.api_key, max_retries=0).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content


def _spent(srv) -> int:
    b = billing_of(srv)
    return srv.call(b.spent("project", srv.project_id))[0]


def test_failed_attempts_are_not_billed_and_retries_billed_once(gw, fake):
    client = OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    fake.push(Behaviour(status=500), Behaviour(status=500), Behaviour(status=500))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**CHAT)
    assert _spent(gw) == 0
    assert billing_of(gw).limiter.__class__.__name__ and _reserved(gw) == 0
    fake.push(Behaviour(status=503))  # the first attempt fails, the retry answers
    client.chat.completions.create(**CHAT)
    assert len(fake.model_requests()) == 5
    assert _spent(gw) == COST


def _reserved(srv) -> int:
    return srv.call(billing_of(srv).spent("project", srv.project_id))[1]


def test_streams_and_disconnects_are_billed(gw, fake):
    client = OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    chunks = list(client.chat.completions.create(**CHAT, stream=True))
    assert chunks and _spent(gw) == COST
    # a client that goes away mid-stream: what was generated until then is billed
    fake.push(Behaviour(chunk_delay=0.2, text="one two three four five six seven eight nine ten"))
    with (
        httpx.Client(timeout=10) as c,
        c.stream(
            "POST",
            gw.v1 + "/chat/completions",
            json={**CHAT, "max_tokens": 50, "stream": True},
            headers={"Authorization": f"Bearer {gw.api_key}"},
        ) as r,
    ):
        for line in r.iter_lines():
            if '"content"' in line and "one" in line:
                break
    deadline = time.monotonic() + 5
    while _spent(gw) == COST and time.monotonic() < deadline:
        time.sleep(0.05)
    after = _spent(gw)
    assert COST < after < COST + 50 * 1000  # billed for what was relayed, not the whole reservation
    assert _reserved(gw) == 0
