"""Batches (issue 17 item 4), through the official SDK over HTTP: the input file priced at upload at the
batch price (half), the estimate reserved when the batch is created, the output metered once when the
batch is read in a terminal state (or its output file is), in the Usage and Costs APIs as batch usage.

The fake upstream answers each request of a batch with 5 output tokens; PRICED prices gpt-4o-mini at
$0 input and $1600 per 1M output tokens, so a line with max_tokens=10 reserves 10 x 800 = 8000
micro-dollars at the batch price and costs 5 x 800 = 4000.
"""

from __future__ import annotations

import time

import openai
import orjson
import pytest
from openai import OpenAI

from keyplane.billing.batch_input import estimate
from keyplane.billing.batch_output import parse_output, record_id
from keyplane.billing.prices import PriceTable
from tests.billing.conftest import admin_http, admin_sdk, billing_of
from tests.billing.conftest import set_spend_limit as _limit
from tests.support import until_the_kill_switch_refuses
from tests.usage.support import drain

RESERVED, COST = 8000, 4000  # per line: max_tokens=10, and the 5 tokens the fake writes, at half price


def _jsonl(
    n: int, model: str = "gpt-4o-mini", max_tokens: int | None = 10, url: str = "/v1/chat/completions", start: int = 0
) -> bytes:
    lines = []
    for i in range(start, start + n):
        body: dict = {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        lines.append(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}))
    return b"\n".join(lines) + b"\n"


def _spent(srv) -> tuple[int, int]:
    return srv.call(billing_of(srv).spent("project", srv.project_id))


def _batch(client: OpenAI, n: int, **kw):  # type: ignore[no-untyped-def]
    f = client.files.create(file=("in.jsonl", _jsonl(n, **kw)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def _records(srv, start: int) -> list[dict]:
    drain(srv)
    with admin_http(srv) as h:
        r = h.get("/usage/requests", params={"start_time": start, "kinds[]": "batch_completions", "limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["data"]


def test_a_budget_for_n_batch_requests_lets_a_batch_fit_and_refuses_a_larger_one(make_gateway, fake):
    srv = make_gateway()
    fake.objects.batch_status = "in_progress"
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    _limit(srv, 2)  # 20000 micro-dollars: two lines reserved at the batch price (16000), not three (24000)
    with pytest.raises(openai.RateLimitError) as e:
        _batch(client, 3)
    assert e.value.code == "project_spend_limit_exceeded"
    b = _batch(client, 2)
    assert _spent(srv) == (0, 2 * RESERVED)  # reserved while it runs
    with pytest.raises(openai.RateLimitError):  # 16000 held + 8000 > 20000
        _batch(client, 1)
    fake.objects.batches[b.id]["status"] = "completed"
    assert client.batches.retrieve(b.id).status == "completed"
    assert _spent(srv) == (2 * COST, 0)  # metered at half price, the rest of the reservation released
    _batch(client, 1)  # now it fits
    assert _spent(srv) == (2 * COST, RESERVED)


def test_metered_exactly_once_however_often_it_is_polled(make_gateway, fake):
    srv = make_gateway()
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    start = int(time.time()) - 5
    b = _batch(client, 3)
    for _ in range(4):
        assert client.batches.retrieve(b.id).status == "completed"
    out = client.files.content(b.output_file_id).read()  # the client reads it too: not metered again
    assert len(out.splitlines()) == 3
    client.files.content(b.output_file_id).read()
    assert _spent(srv) == (3 * COST, 0)
    recs = _records(srv, start)
    assert sorted(r["id"] for r in recs) == sorted(record_id(b.id, f"req-{i}") for i in range(3))
    assert {(r["model"], r["output_tokens"], r["cost"]["value"]) for r in recs} == {("gpt-4o-mini", 5, COST / 1e6)}
    # a second instance on the same store finds the batch settled: nothing more is recorded or spent
    other = make_gateway(home=srv.settings.home)
    other_client = OpenAI(base_url=other.v1, api_key=srv.api_key, max_retries=0)
    assert other_client.batches.retrieve(b.id).status == "completed"
    # (its counters start from the SQL ledger, which holds the batch once; metering it again would add to them)
    assert other.call(billing_of(other).spent("project", srv.project_id)) == (3 * COST, 0)
    assert len(_records(srv, start)) == 3


def test_reading_the_output_file_meters_a_batch_not_polled_through_keyplane(make_gateway, fake):
    srv = make_gateway()
    fake.objects.batch_status = "in_progress"
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    b = _batch(client, 2)
    assert client.batches.retrieve(b.id).status == "in_progress"  # not terminal: nothing metered
    assert _spent(srv) == (0, 2 * RESERVED)
    fake.objects.batches[b.id]["status"] = "completed"  # done at the provider; the client reads the output
    client.files.content(b.output_file_id).read()
    assert _spent(srv) == (2 * COST, 0)


def test_a_cancelled_batch_meters_what_completed_and_releases_the_rest(make_gateway, fake):
    srv = make_gateway()
    fake.objects.batch_status = "in_progress"
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    done, lost = _batch(client, 2), _batch(client, 3)
    assert _spent(srv) == (0, 5 * RESERVED)
    client.batches.cancel(done.id)  # the fake's output holds both requests: they ran before the cancel
    assert client.batches.retrieve(done.id).status == "cancelled"
    fake.objects.batches[lost.id].update(status="expired", output_file_id=None)  # nothing ran
    assert client.batches.retrieve(lost.id).status == "expired"
    assert _spent(srv) == (2 * COST, 0)


def test_usage_and_costs_apis_show_batches_at_half_price(make_gateway, fake):
    srv = make_gateway()
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    start = int(time.time()) - 5
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    b = _batch(client, 3)
    client.batches.retrieve(b.id)
    drain(srv)
    usage = admin_sdk(srv).admin.organization.usage
    only = [x for bk in usage.completions(start_time=start, batch=True).data for x in bk.results]
    assert [(x.output_tokens, x.num_model_requests) for x in only] == [(15, 3)]
    grouped = [x for bk in usage.completions(start_time=start, group_by=["batch"]).data for x in bk.results]
    assert sorted((x.batch, x.output_tokens, x.num_model_requests) for x in grouped) == [(False, 5, 1), (True, 15, 3)]
    sync = [x for bk in usage.completions(start_time=start, batch=False).data for x in bk.results]
    assert [x.num_model_requests for x in sync] == [1]
    costs = usage.costs(start_time=start, group_by=["line_item"])
    items = {x.line_item: round(x.amount.value * 1e6) for bk in costs.data for x in bk.results}
    assert items["gpt-4o-mini, output (batch)"] == 3 * COST  # half of the 8000 three sync requests would cost
    assert items["gpt-4o-mini, output"] == 8000
    total = usage.costs(start_time=start)
    assert round(sum(x.amount.value for bk in total.data for x in bk.results) * 1e6) == 8000 + 3 * COST


GUARD = (
    '\n[[guard.rules]]\nname = "batch-ceiling"\nkind = "ceiling"\nscope = "key"\nwindow = "1h"\n'
    'threshold = 0.01\nmetric = "cost_usd"\nmode = "suspend"\n'
)


def test_the_kill_switch_sees_a_batch(make_gateway, fake):
    """A cost ceiling of $0.01 per hour: a batch metered at $0.012 trips it."""
    srv = make_gateway(GUARD)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    b = _batch(client, 3)
    client.batches.retrieve(b.id)
    assert _spent(srv)[0] == 3 * COST
    until_the_kill_switch_refuses(srv, lambda: client.batches.retrieve(b.id))
    assert srv.app.runtime.snapshot.keys_by_id[srv.init["api_key_id"]].suspended_at is not None


def test_a_file_keyplane_cannot_price_is_refused_under_money_controls(make_gateway, fake):
    srv = make_gateway()
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    unpriced = client.files.create(file=("in.jsonl", _jsonl(1, model="fake-unpriced")), purpose="batch")
    unlimited = client.files.create(file=("in.jsonl", _jsonl(1, max_tokens=None)), purpose="batch")
    # no money control: served (nothing reserved; its output metered as any batch's)
    client.batches.create(input_file_id=unpriced.id, endpoint="/v1/chat/completions", completion_window="24h")
    _limit(srv, 100)
    seen = len(fake.model_requests())
    for f, why in ((unpriced, "fake-unpriced"), (unlimited, "no output limit")):
        with pytest.raises(openai.PermissionDeniedError) as e:
            client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert e.value.code == "cost_not_bounded" and why in e.value.message
        assert "upload the input file through keyplane" in e.value.message
    assert len(fake.model_requests()) == seen


def test_a_file_made_through_the_uploads_api_is_the_projects_but_runs_no_batch(make_gateway, fake):
    """The Uploads API's parts stream through unread (proxy/uploads.py). The file a completed upload makes is the
    project's own (it was a 404 to its own project), but as a batch input file its requests (models, tools, the
    objects they name) were never checked nor priced: no batch may run it, with or without money controls."""
    srv = make_gateway()
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    notes = client.uploads.upload_file_chunked(
        file=b"notes", filename="n.txt", bytes=5, mime_type="text/plain", purpose="assistants"
    )
    assert notes.file is not None and client.files.retrieve(notes.file.id).id == notes.file.id
    data = _jsonl(3)
    up = client.uploads.upload_file_chunked(
        file=data, filename="in.jsonl", bytes=len(data), mime_type="application/jsonl", purpose="batch"
    )
    assert up.file is not None and fake.objects.contents[up.file.id] == data
    assert client.files.retrieve(up.file.id).id == up.file.id
    seen = len(fake.model_requests())
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.batches.create(input_file_id=up.file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.code == "batch_input_unchecked"
    assert len(fake.model_requests()) == seen


def test_estimates_of_input_files():
    t = PriceTable.from_config({})
    mini = t.lookup("gpt-4o-mini")
    assert mini is not None and t.batch_factor("gpt-4o-mini-2024-07-18") == 500_000
    one = estimate(t, _jsonl(1), 4096)
    assert one.cost is not None and one.lines == 1 and one.models == ["gpt-4o-mini"]
    assert estimate(t, _jsonl(4), 4096).cost == 4 * one.cost
    # the synchronous quote halved (rounded up)
    from keyplane.billing import quote as quote_mod

    body = orjson.loads(_jsonl(1))["body"]
    sync = quote_mod.quote(t, "/v1/chat/completions", "gpt-4o-mini", orjson.dumps(body), 10, False, None, 4096)
    assert one.cost == -(-sync.cost // 2)
    emb = estimate(t, _jsonl(2, model="text-embedding-3-small", url="/v1/embeddings", max_tokens=None), 4096)
    assert emb.cost is not None and emb.lines == 2
    assert estimate(t, _jsonl(1, max_tokens=None), 4096).cost is not None  # gpt-4o-mini has a max_output
    for bad, why in (
        (b"not json\n", "not JSON"),
        (_jsonl(1, url="/v1/images/generations"), "does not price"),
        (_jsonl(1, model="no-such-model"), "no-such-model"),
        (b"\n", "no requests"),
    ):
        e = estimate(t, bad, 4096)
        assert e.cost is None and why in (e.why or ""), (bad, e.why)


def test_output_lines_are_read_with_stable_ids():
    line = {
        "id": "batch_req_1",
        "custom_id": "a",
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {
                "model": "gpt-4o-mini",
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}},
            },
        },
        "error": None,
    }
    failed = {"id": "batch_req_2", "custom_id": "b", "response": None, "error": {"code": "x", "message": "y"}}
    out = parse_output(b"\n".join(orjson.dumps(x) for x in (line, failed, line)), "batch_1")
    assert [(x.prompt, x.cached, x.completion) for x in out] == [(7, 2, 3), (7, 2, 3)]
    assert out[0].rid == record_id("batch_1", "a") and out[1].rid != out[0].rid  # a repeated custom_id
    assert parse_output(b"\n".join(orjson.dumps(x) for x in (line, failed, line)), "batch_1")[0].rid == out[0].rid
    assert len(out[0].rid) <= 64


def test_a_batch_reservation_outlives_the_request_ttl():
    """Held for the batch's window (26 h), not reservation_ttl_seconds: a sweep after 15 minutes keeps it."""
    import asyncio

    from keyplane.billing.batches import RESERVE_SECONDS
    from keyplane.limits import BudgetRef
    from keyplane.limits.memory import MemoryLimiter

    now = [1_000_000.0]
    lim = MemoryLimiter(lambda: now[0], 900)
    budget = (BudgetRef("2026-01:project:p", 10_000, 0),)
    lim.admit_now("batch-create", budget, (), 6_000, 0, RESERVE_SECONDS * 1_000_000)
    lim.admit_now("request", budget, (), 1_000, 0)
    now[0] += 3600
    assert asyncio.run(lim.sweep()) == 1  # the request's reservation expired, the batch's is held
    assert lim.budgets["2026-01:project:p"] == [0, 6_000]
    now[0] += RESERVE_SECONDS
    assert asyncio.run(lim.sweep()) == 1 and lim.budgets["2026-01:project:p"] == [0, 0]


def test_a_batch_nobody_reads_again_is_metered_by_the_background_poll(make_gateway, fake):
    srv = make_gateway()
    fake.objects.batch_status = "in_progress"
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    b = _batch(client, 2)
    batches = srv.app.runtime.features.batches
    assert srv.call(batches.poll(min_age=0)) == 0  # still running at the provider
    fake.objects.batches[b.id]["status"] = "completed"
    assert srv.call(batches.poll(min_age=0)) == 0  # polled a moment ago: not again before POLL_SECONDS
    batches.poller.polled.clear()
    assert srv.call(batches.poll(min_age=0)) == 1
    assert _spent(srv) == (2 * COST, 0)
    client.batches.retrieve(b.id)  # read afterwards: nothing more
    assert _spent(srv) == (2 * COST, 0)


# --- access: scopes, model and hosted tool permissions of every request of the file ------------------


def _line(i: int, model: str, **body: object) -> bytes:
    b = {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 10, **body}
    return orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": b})


def _create(client: OpenAI, content: bytes, purpose: str = "batch"):  # type: ignore[no-untyped-def]
    f = client.files.create(file=("in.jsonl", content), purpose=purpose)  # type: ignore[arg-type]
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def _denied(call, code: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.PermissionDeniedError) as e:
        call()
    assert e.value.code == code, e.value.body
    return e.value.message


def test_a_batch_is_held_to_the_model_permissions_line_by_line(make_gateway, fake):
    srv = make_gateway()
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    admin_sdk(srv).admin.organization.projects.model_permissions.update(
        srv.project_id, mode="allow_list", model_ids=["gpt-4o-mini"]
    )
    before = len(fake.objects.batches)
    msg = _denied(
        lambda: _create(client, b"\n".join([_line(1, "gpt-4o-mini"), _line(2, "gpt-4o")])), "model_not_permitted"
    )
    assert "`gpt-4o`" in msg and "Line 2 of the batch's input file" in msg and srv.project_id in msg
    # a second model deeper in a request is one the provider may run too
    msg = _denied(lambda: _create(client, _line(1, "gpt-4o-mini", metadata={"model": "o3"})), "model_not_permitted")
    assert "`o3`" in msg and "Line 1" in msg
    # a file keyplane did not read as a batch file cannot be checked
    msg = _denied(lambda: _create(client, _line(1, "gpt-4o-mini"), purpose="fine-tune"), "batch_not_permitted")
    assert "purpose=batch" in msg
    assert len(fake.objects.batches) == before  # nothing reached the upstream
    ok = _create(client, b"\n".join([_line(1, "gpt-4o-mini"), _line(2, "gpt-4o-mini-2024-07-18")]))
    assert ok.id in fake.objects.batches


def test_a_batch_is_held_to_the_scopes_of_its_key(make_gateway, fake):
    """A key allowed batches and files but not model requests cannot run chat completions through a batch."""
    srv = make_gateway()
    with admin_http(srv) as h:
        key = h.post(
            f"/projects/{srv.project_id}/api_keys",
            json={"name": "batch-only", "permissions": ["api.batch.write", "api.files.write"]},
        ).json()
    client = OpenAI(base_url=srv.v1, api_key=key["value"], max_retries=0)
    before = len(fake.objects.batches)
    msg = _denied(lambda: _create(client, _line(1, "gpt-4o-mini")), "missing_scope")
    assert "api.model.request" in msg and "/v1/chat/completions" in msg
    assert len(fake.objects.batches) == before
    full = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    assert _create(full, _line(1, "gpt-4o-mini")).id in fake.objects.batches


# input $1 and output $1600 per 1M tokens, 5 output tokens at most, 100 tokens of context window.
TOOLS_PRICE = '[prices."fake-tools"]\ninput = 1\noutput = 1600\nmax_output = 5\ncontext_window = 100\n'


def _tool_lines(n: int, **body: object) -> bytes:
    return b"\n".join(
        orjson.dumps(
            {
                "custom_id": f"t-{i}",
                "method": "POST",
                "url": "/v1/responses",
                "body": {
                    "model": "fake-tools",
                    "input": f"search {i}",
                    "tools": [{"type": "web_search"}],
                    "max_output_tokens": 5,
                    **body,
                },
            }
        )
        for i in range(n)
    )


def test_hosted_tools_in_a_batch_are_reserved_up_to_max_tool_calls_and_metered(make_gateway, fake):
    srv = make_gateway(TOOLS_PRICE)
    fake.objects.batch_status = "in_progress"
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    start = int(time.time()) - 5
    _limit(srv, 100)
    # Without max_tool_calls the calls are not bounded: refused under a spend limit, saying what to set.
    f = client.files.create(file=("in.jsonl", _tool_lines(1)), purpose="batch")
    msg = _denied(
        lambda: client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h"),
        "cost_not_bounded",
    )
    assert "max_tool_calls" in msg
    # With it: per request 2 calls x $0.01 at full price, plus (2 + 1) turns x 100 input tokens x $1/M and
    # 5 output tokens x $1600/M at half price: 20000 + ceil(8300 / 2) = 24150 micro-dollars reserved.
    f = client.files.create(file=("in.jsonl", _tool_lines(2, max_tool_calls=2)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    assert _spent(srv) == (0, 2 * 24_150)
    fake.objects.batches[b.id]["status"] = "completed"
    client.batches.retrieve(b.id)  # each request searched once (the fake calls each tool it is given once)
    drain(srv)
    with admin_http(srv) as h:
        recs = h.get("/usage/requests", params={"start_time": start, "limit": 100}).json()["data"]
    toks = [r for r in recs if r["kind"] == "batch_responses"]
    searches = [r for r in recs if r["kind"] == "web_search_calls"]
    assert len(toks) == 2 and len(searches) == 2 and len({r["id"] for r in recs}) == len(recs)
    token_cost = sum(-(-(r["input_tokens"] + 5 * 1600) // 2) for r in toks)
    assert sum(round(r["cost"]["value"] * 1e6) for r in toks) == token_cost
    assert _spent(srv) == (token_cost + 2 * 10_000, 0)
    usage = admin_sdk(srv).admin.organization.usage
    web = [x for bk in usage.web_search_calls(start_time=start).data for x in bk.results]
    assert [x.num_requests for x in web] == [2]
    costs = usage.costs(start_time=start, group_by=["line_item"])
    items = {x.line_item: round(x.amount.value * 1e6) for bk in costs.data for x in bk.results}
    assert items["web search tool calls"] == 2 * 10_000


def test_a_hosted_tool_disabled_for_the_project_refuses_the_batch(make_gateway, fake):
    srv = make_gateway(TOOLS_PRICE)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    admin_sdk(srv).admin.organization.projects.hosted_tool_permissions.update(
        srv.project_id, web_search={"enabled": False}
    )
    plain = orjson.dumps(
        {
            "custom_id": "p",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "fake-tools", "input": "hi", "max_output_tokens": 5},
        }
    )
    before = len(fake.objects.batches)
    for content in (
        plain + b"\n" + _tool_lines(1, max_tool_calls=1),  # a tool
        orjson.dumps(
            {
                "custom_id": "s",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini-search-preview", "messages": [], "max_tokens": 5},
            }
        ),
    ):  # a search model
        f = client.files.create(file=("in.jsonl", content), purpose="batch")
        msg = _denied(
            lambda f=f: client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h"),
            "tool_not_permitted",
        )
        assert "`web_search`" in msg and "Line" in msg
    assert len(fake.objects.batches) == before
    f = client.files.create(file=("in.jsonl", plain), purpose="batch")
    assert client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h").id


def test_estimates_of_input_files_with_hosted_tools():
    t = PriceTable.from_config({}, "")
    lines = _tool_lines(1, model="gpt-4.1-mini", max_tool_calls=3).replace(b'"fake-tools"', b'"gpt-4.1-mini"')
    est = estimate(t, lines, 4096)
    # 3 web searches at $0.01, plus (3 + 1) x the 1047576-token context window x $0.40/M and 5 output tokens
    # x $1.60/M, halved and rounded up once
    assert est.cost == 3 * 10_000 + -(-(-(-(4 * 1_047_576 * 400_000 + 5 * 1_600_000) // 1_000_000)) // 2)
    assert est.facts.tools == {"web_search": 1} and est.facts.models == {"gpt-4.1-mini": 1}
    unbounded = estimate(t, _tool_lines(1).replace(b'"fake-tools"', b'"gpt-4.1-mini"'), 4096)
    assert unbounded.cost is None and "max_tool_calls" in (unbounded.why or "")
    assert unbounded.facts.unchecked is None and unbounded.facts.tools == {"web_search": 1}  # still read


def test_estimates_of_input_files_with_a_stored_prompt():
    """A stored prompt may enable any hosted tool: the line needs max_tool_calls, each call at the dearest tool,
    and the stored prompt is read from the line's body (where it stands), for the access checks."""
    from keyplane.billing import quote_tools

    t = PriceTable.from_config({}, "")

    def line(**body: object) -> bytes:
        return orjson.dumps(
            {
                "custom_id": "s",
                "method": "POST",
                "url": "/v1/responses",
                "body": {
                    "model": "gpt-4.1-mini",
                    "prompt": {"id": "pmpt_1"},
                    "input": "go",
                    "max_output_tokens": 5,
                    **body,
                },
            }
        )

    unbounded = estimate(t, line(), 4096)
    assert unbounded.cost is None and "stored prompt" in (unbounded.why or "") and "max_tool_calls" in unbounded.why
    assert unbounded.facts.stored_prompt == 1
    est = estimate(t, line(max_tool_calls=2), 4096)
    dearest = max(quote_tools.tool_prices(t).values())
    assert est.cost is not None and est.cost > 2 * dearest and est.facts.stored_prompt == 1
    assert est.tool_prices == quote_tools.tool_prices(t)  # every kind the prompt may call, priced for metering
    plain = estimate(t, _jsonl(1), 4096)
    assert plain.facts.stored_prompt is None


def test_a_batch_that_fails_to_meter_is_retried_and_does_not_hold_up_the_others(make_gateway, fake, monkeypatch):
    """An upstream error reading one batch's output (a 503: not gone) leaves that batch to a later poll,
    unmetered and unclaimed; the poll meters the others meanwhile."""
    from keyplane import errors

    srv = make_gateway()
    fake.objects.batch_status = "in_progress"
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    first, second = _batch(client, 1), _batch(client, 1, start=1)
    for b in (first, second):
        fake.objects.batches[b.id]["status"] = "completed"
    batches = srv.app.runtime.features.batches
    real = batches.upstream.get_bytes

    async def flaky(router, client_, upstream, project_id, path):  # type: ignore[no-untyped-def]
        if path == f"/v1/files/{first.output_file_id}/content":
            raise errors.upstream_error("The upstream answered 503.")
        return await real(router, client_, upstream, project_id, path)

    monkeypatch.setattr(batches.upstream, "get_bytes", flaky)
    assert srv.call(batches.poll(min_age=0)) == 1
    assert _spent(srv) == (COST, RESERVED)  # the second metered; the first still held, not billed at its bound
    monkeypatch.setattr(batches.upstream, "get_bytes", real)
    batches.poller.polled.clear()
    assert srv.call(batches.poll(min_age=0)) == 1
    assert _spent(srv) == (2 * COST, 0)


def test_a_running_batch_is_held_again_once_when_the_counters_are_rebuilt(make_gateway, fake):
    """The counters rebuilt (a restart of the in-process limiter; Redis after a loss of its data): a running
    batch's reservation is held again, once however often that happens, and no more once it is metered."""
    srv = make_gateway()
    fake.objects.batch_status = "in_progress"
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    b = _batch(client, 2)
    billing = billing_of(srv)
    if billing.fleet:
        srv.call(billing.limiter.delete_all())  # Redis lost everything
        srv.call(billing.reseed_if_needed())
    else:
        billing.limiter.budgets.clear()  # as a new process starts
        billing.limiter.reservations.clear()
        srv.call(billing.seed())
    assert _spent(srv) == (0, 2 * RESERVED)
    for _ in range(2):
        assert srv.call(billing.hold_batches()) == 0  # held already
        assert _spent(srv) == (0, 2 * RESERVED)
    fake.objects.batches[b.id]["status"] = "completed"
    client.batches.retrieve(b.id)
    assert srv.call(billing.hold_batches()) == 0  # metered: nothing held again
    assert _spent(srv) == (2 * COST, 0)


def test_a_suspended_keys_batch_is_cancelled_once_audited_and_metered(make_gateway, fake):
    srv = make_gateway()
    fake.objects.batch_status = "in_progress"
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    b = _batch(client, 2)
    batches = srv.app.runtime.features.batches
    assert srv.call(batches.poll(min_age=0)) == 0
    assert fake.objects.batches[b.id]["status"] == "in_progress"  # an active key's batch runs on
    with admin_http(srv) as h:
        r = h.post(f"/projects/{srv.project_id}/api_keys/{srv.init['api_key_id']}/suspend", json={"reason": "leak"})
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 5
    while srv.app.runtime.snapshot.keys_by_id[srv.init["api_key_id"]].suspended_at is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    batches.poller.polled.clear()
    assert srv.call(batches.poll(min_age=0)) == 1  # cancelled, then metered as a cancelled batch
    assert fake.objects.batches[b.id]["status"] == "cancelled"
    assert _spent(srv) == (2 * COST, 0)
    cancels = [r for r in fake.requests if r.path.endswith("/cancel")]
    batches.poller.polled.clear()
    srv.call(batches.poll(min_age=0))
    assert [r for r in fake.requests if r.path.endswith("/cancel")] == cancels == cancels[:1]  # once
    with admin_http(srv) as h:
        entries = h.get("/audit_logs", params={"event_types[]": "batch.cancelled"}).json()["data"]
    assert len(entries) == 1 and b.id in orjson.dumps(entries[0]).decode(), entries
