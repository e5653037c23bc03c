"""The Usage and Costs API and the request listing, through the official SDK, over known records."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from keyplane.clock import FakeClock
from keyplane.usage.applier import apply_records
from tests.usage.test_rollups import T0, brute, make_records

DAY = 86400
NOW = T0 + 3 * DAY + 5 * 3600 + 17  # "now" for the server: three days and a bit after T0


@pytest.fixture
def usage_server(database_url, gateways):
    yield gateways.start(clock=FakeClock(NOW), store=database_url)
    gateways.stop_all()  # before the test's PostgreSQL database is dropped


@pytest.fixture
def records(usage_server):
    recs = make_records(700, seed=3)
    usage_server.call(apply_records(usage_server.app.runtime.engine, recs))
    return recs


def admin(srv) -> OpenAI:
    return OpenAI(base_url=srv.v1, admin_api_key=srv.admin_key, api_key="x", max_retries=0)


def _completions(records):
    return [r for r in records if r.kind in ("completions", "responses")]


def test_completions_by_day_grouped(usage_server, records):
    from keyplane.usage.rollups import Filters

    page = admin(usage_server).admin.organization.usage.completions(
        start_time=T0, end_time=T0 + 3 * DAY, bucket_width="1d", group_by=["model", "project_id"]
    )
    assert page.object == "page" and not page.has_more and page.next_page is None
    assert [(b.start_time, b.end_time) for b in page.data] == [(T0 + i * DAY, T0 + (i + 1) * DAY) for i in range(3)]
    want = brute(records, T0, T0 + 3 * DAY, DAY, ("model", "project_id"), Filters(kinds=("completions",)))
    got = {}
    for b in page.data:
        for r in b.results:
            assert r.object == "organization.usage.completions.result"
            assert r.api_key_id is None and r.user_id is None and r.batch is None
            got[(b.start_time, r.model, r.project_id)] = (r.num_model_requests, r.input_tokens, r.output_tokens)
    assert got == {
        k: (v["model_requests"], v["input_tokens"], v["output_tokens"])
        for k, v in want.items()
        if v["model_requests"] or v["input_tokens"] or v["output_tokens"]
    }
    cached = sum(r.input_cached_tokens for b in page.data for r in b.results)
    assert cached == sum(r.cached_tokens for r in _completions(records))


def test_paging_follows_next_page_to_the_end(usage_server, records):
    """The SDK pages with page=next_page; 1h buckets from an unaligned start, to 'now'."""
    client = admin(usage_server)
    start = T0 + 1234
    seen, pages, cursor = [], 0, None
    while True:
        kw = {"page": cursor} if cursor else {}
        page = client.admin.organization.usage.completions(start_time=start, bucket_width="1h", limit=24, **kw)
        pages += 1
        seen.extend(page.data)
        if not page.has_more:
            assert page.next_page is None
            break
        assert len(page.data) == 24
        cursor = page.next_page
    starts = [b.start_time for b in seen]
    assert starts[0] == T0 and starts == list(range(T0, NOW + 1, 3600))[: len(starts)]
    assert seen[-1].end_time > NOW >= seen[-1].start_time and pages == len(starts) // 24 + 1
    total = sum(r.input_tokens for b in seen for r in b.results)
    assert total == sum(r.input_tokens for r in _completions(records) if start <= int(r.t) <= NOW)


def test_minute_buckets(usage_server, records):
    start = T0 + 2 * DAY + 7 * 3600 + 31
    page = admin(usage_server).admin.organization.usage.completions(
        start_time=start, end_time=start + 3 * 3600, bucket_width="1m", limit=1440, group_by=["api_key_id"]
    )
    assert len(page.data) == 181 and not page.has_more  # 3 h from second 31: 181 minute buckets
    n = sum(r.num_model_requests for b in page.data for r in b.results)
    assert n == sum(1 for r in _completions(records) if start <= int(r.t) < start + 3 * 3600 and r.model_request)
    assert {r.api_key_id for b in page.data for r in b.results} <= {"key_1", "key_2", "key_3"}


def test_embeddings_and_filters(usage_server, records):
    client = admin(usage_server)
    page = client.admin.organization.usage.embeddings(
        start_time=T0, end_time=T0 + 3 * DAY, project_ids=["proj_a"], models=["text-embedding-3-small"]
    )
    got = sum(r.input_tokens for b in page.data for r in b.results)
    assert got == sum(r.input_tokens for r in records if r.kind == "embeddings" and r.project_id == "proj_a")
    assert all(r.object == "organization.usage.embeddings.result" for b in page.data for r in b.results)
    for kind in (
        "images",
        "audio_speeches",
        "audio_transcriptions",
        "vector_stores",
        "code_interpreter_sessions",
        "moderations",
    ):
        page = getattr(client.admin.organization.usage, kind)(start_time=T0, end_time=T0 + 2 * DAY)
        assert len(page.data) == 2 and all(b.results == [] for b in page.data)


def test_costs(usage_server, records):
    client = admin(usage_server)
    end = T0 + 3 * DAY
    page = client.admin.organization.usage.costs(start_time=T0, end_time=end)
    total = sum(r.amount.value for b in page.data for r in b.results)
    assert total == pytest.approx(sum(r.cost_micros for r in records) / 1e6)
    assert all(r.amount.currency == "usd" and r.line_item is None for b in page.data for r in b.results)
    page = client.admin.organization.usage.costs(start_time=T0, end_time=end, group_by=["line_item", "project_id"])
    items = {}
    for b in page.data:
        for r in b.results:
            assert r.quantity_unit == "tokens" and r.project_id in ("proj_a", "proj_b")
            items[r.line_item] = items.get(r.line_item, 0) + r.amount.value
    assert set(items) == {
        f"{m}, {d}" for m in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small") for d in ("input", "output")
    }
    gpt4o_in = sum(r.cost_input_micros for r in records if r.model == "gpt-4o") / 1e6
    assert items["gpt-4o, input"] == pytest.approx(gpt4o_in)
    page = client.admin.organization.usage.costs(start_time=T0, end_time=end, line_items=["gpt-4o, output"])
    want = sum(r.cost_micros - r.cost_input_micros for r in records if r.model == "gpt-4o") / 1e6
    assert sum(r.amount.value for b in page.data for r in b.results) == pytest.approx(want)


@pytest.mark.parametrize(
    "params,param",
    [
        ({"start_time": T0, "bucket_width": "2h"}, "bucket_width"),
        ({"start_time": T0, "bucket_width": "1d", "limit": 32}, "limit"),
        ({"start_time": T0, "bucket_width": "1h", "limit": 0}, "limit"),
        ({"start_time": T0, "end_time": T0 - 10}, "end_time"),
        ({"start_time": T0, "group_by": ["colour"]}, "group_by"),
        ({"start_time": T0, "page": "page_garbage!"}, "page"),
        ({}, "start_time"),
    ],
)
def test_bad_parameters_are_400(usage_server, params, param):
    client = admin(usage_server)
    with pytest.raises(openai.BadRequestError) as e:
        client.admin.organization.usage.completions(**params) if params else client.get(
            "/organization/usage/completions", cast_to=object, options={"security": {"admin_api_key_auth": True}}
        )
    err = e.value.body
    assert e.value.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error"


def test_costs_only_daily_and_limit_180(usage_server):
    client = admin(usage_server)
    with pytest.raises(openai.BadRequestError):
        client.get(
            "/organization/costs?start_time=%d&bucket_width=1h" % T0,
            cast_to=object,
            options={"security": {"admin_api_key_auth": True}},
        )
    page = client.admin.organization.usage.costs(start_time=T0 - 170 * DAY, limit=180)
    assert len(page.data) == 174 and not page.has_more


def test_a_project_key_is_refused(usage_server):
    r = httpx.get(
        usage_server.v1 + "/organization/usage/completions",
        params={"start_time": T0},
        headers={"authorization": f"Bearer {usage_server.api_key}"},
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_request_listing(usage_server, records):
    h = {"authorization": f"Bearer {usage_server.admin_key}"}
    url = usage_server.v1 + "/organization/usage/requests"
    q = {"api_key_ids[]": "key_3", "status": "5xx", "limit": 7}
    got, after = [], None
    while True:
        r = httpx.get(url, params={**q, **({"after": after} if after else {})}, headers=h)
        assert r.status_code == 200, r.text
        body = r.json()
        got.extend(body["data"])
        if not body["has_more"]:
            break
        after = body["last_id"]
    want = sorted((r for r in records if r.key_id == "key_3" and r.status >= 500), key=lambda r: -int(r.t))
    assert [g["id"] for g in got] == [w.id for w in want]
    assert all(g["object"] == "organization.usage.request" and g["status"] == 500 for g in got)
    r = httpx.get(url, params={"models": "gpt-4o", "start_time": T0 + DAY, "end_time": T0 + DAY + 3600}, headers=h)
    assert {x["id"] for x in r.json()["data"]} == {
        x.id for x in records if x.model == "gpt-4o" and T0 + DAY <= int(x.t) < T0 + DAY + 3600
    }
    r = httpx.get(url, params={"status": "teapot"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "status"
