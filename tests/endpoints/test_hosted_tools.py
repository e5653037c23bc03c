"""Hosted tools of the Responses API priced per call (issue 17 item 5), through the official SDK:
reserved up to max_tool_calls (keyplane sets it when absent), billed from the answer's output items,
metered into web_search_calls / file_search_calls / code_interpreter_sessions."""

from __future__ import annotations

import asyncio
import collections
import time

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.billing.conftest import admin_sdk, billing_of
from tests.billing.conftest import set_spend_limit as _limit
from tests.usage.support import drain

# input $1 and output $1600 per 1M tokens; the fake writes 5 output tokens when allowed 5.
PRICE = '[prices."fake-tools"]\ninput = 1\noutput = 1600\nmax_output = 5\ncontext_window = 100\n'
WEB, CODE = {"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}


def _spent(srv) -> int:
    return srv.call(billing_of(srv).spent("project", srv.project_id))[0]


def test_tool_calls_are_billed_and_metered(make_gateway, fake):
    srv = make_gateway(PRICE)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    start = int(time.time()) - 5
    files = {"type": "file_search", "vector_store_ids": [client.vector_stores.create(name="docs").id]}
    r = client.responses.create(model="fake-tools", input="hi", tools=[WEB, CODE, files])
    assert [o.type for o in r.output][:4] == [
        "web_search_call",
        "code_interpreter_call",
        "code_interpreter_call",
        "file_search_call",
    ]
    sent = fake.model_requests()[-1].json()
    assert sent["max_tool_calls"] == 8 and sent["max_output_tokens"] == 5  # what was reserved is what it may do
    tokens = -(-(r.usage.input_tokens * 1_000_000 + r.usage.output_tokens * 1_600_000_000) // 1_000_000)
    tools = 10_000 + 30_000 + 2_500  # one search, one container (two calls in it), one file search
    assert _spent(srv) == tokens + tools
    drain(srv)
    admin = admin_sdk(srv).admin.organization.usage
    web = [x for b in admin.web_search_calls(start_time=start, group_by=["model"]).data for x in b.results]
    assert [(x.model, x.num_requests, x.num_model_requests) for x in web] == [("fake-tools", 1, 1)]
    code = [x for b in admin.code_interpreter_sessions(start_time=start).data for x in b.results]
    assert [x.num_sessions for x in code] == [1]
    files = [x for b in admin.file_search_calls(start_time=start).data for x in b.results]
    assert [x.num_requests for x in files] == [1]
    comp = [x for b in admin.completions(start_time=start).data for x in b.results]
    assert [(x.input_tokens, x.output_tokens, x.num_model_requests) for x in comp] == [
        (r.usage.input_tokens, r.usage.output_tokens, 1)
    ]
    costs = admin.costs(start_time=start, group_by=["line_item"])
    items = {x.line_item: round(x.amount.value * 1e6) for b in costs.data for x in b.results}
    assert items["web search tool calls"] == 10_000 and items["code interpreter sessions"] == 30_000
    assert items["file search tool calls"] == 2_500 and sum(items.values()) == tokens + tools


def test_a_budget_for_n_tool_requests_lets_exactly_n_through(make_gateway, fake):
    """Each request reserves 2 calls x $0.01 + (2 + 1) x 100 input tokens + 5 output tokens; the budget
    holds exactly 4 such reservations, and a race lets exactly 4 through."""
    srv = make_gateway(PRICE)
    per = 2 * 10_000 + 300 + 8_000  # reserved: 28_300 micro-dollars
    _limit(srv, 12)  # $0.12 -> 4 reservations (113_200), not 5
    client = AsyncOpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0, timeout=60)

    async def one() -> str:
        try:
            await client.responses.create(model="fake-tools", input="hi", tools=[WEB], max_tool_calls=2)
            return "ok"
        except openai.RateLimitError as e:
            return str(e.code)

    async def race() -> collections.Counter:
        try:
            return collections.Counter(await asyncio.gather(*[one() for _ in range(12)]))
        finally:
            await client.close()

    before = len(fake.model_requests())
    counts = asyncio.run(race())
    assert counts == {"ok": 4, "project_spend_limit_exceeded": 8}
    assert len(fake.model_requests()) - before == 4
    assert 4 * 10_000 < _spent(srv) <= 4 * per


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "image_generation"},
        {"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "browser"},
    ],
)
def test_tools_keyplane_cannot_price_are_refused_under_money_controls(make_gateway, fake, tool):
    srv = make_gateway(PRICE)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.responses.create(model="fake-tools", input="hi", tools=[tool])  # no money control: served
    _limit(srv, 100)
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.responses.create(model="fake-tools", input="hi", tools=[tool])
    assert e.value.code == "cost_not_bounded"
    client.responses.create(model="fake-tools", input="hi", tools=[WEB])  # priced: served
