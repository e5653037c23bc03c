"""Code interpreter containers priced by their memory (red team round 10): OpenAI bills a container session
by its `memory_limit`, 1 GB (the default) $0.03, 4 GB $0.12, 16 GB $0.48, 64 GB $1.92. The price table's
[tools.code_interpreter] carries those prices; each allowed session (`max_tool_calls`) is reserved, and each
container the answer shows billed, at the price of the requested memory; a memory the table does not price is
not bounded (cost_not_bounded under money controls); a container named by id is reserved at the dearest.
The gateways (tests/billing/conftest.py) run on the in-process limiter and on Redis."""

from __future__ import annotations

import tomllib

import orjson
import pytest

from keyplane.billing.prices import PriceTable
from keyplane.billing.prices_file import PriceError, shipped_containers, shipped_tools
from keyplane.billing.quote_tools import container_price, hosted_tools, tool_cost, tool_prices
from tests.redteam.test_wk49_round4 import _limit, _project, _spent
from tests.redteam.test_wk50_round10 import _code, _owned, _post

GB1, GB4, GB16, GB64 = 30_000, 120_000, 480_000, 1_920_000  # micro-dollars per session, OpenAI's list prices
SHIPPED = {"1g": GB1, "4g": GB4, "16g": GB16, "64g": GB64}

# A dated snapshot with its own entry: $0 input, $1600 per 1M output tokens, a context window (hosted tools
# need one); the fake upstream writes 5 output tokens when allowed 5, and one container per answer.
MODEL = "gpt-4o-mini-2024-07-18"
PRICE = f'[prices."{MODEL}"]\ninput = 0\noutput = 1600\ncontext_window = 128000\n'
OUTPUT = 5 * 1600


def _tool(container: object) -> dict:
    return {"type": "code_interpreter", "container": container}


def _body(container: object, calls: int | None = 1) -> dict:
    body: dict = {"model": MODEL, "input": "run it", "tools": [_tool(container)], "max_output_tokens": 5}
    if calls is not None:
        body["max_tool_calls"] = calls
    return body


def _quote(table: PriceTable, *containers: object, calls: int | None = 1):  # type: ignore[no-untyped-def]
    body = {"tools": [_tool(c) for c in containers]}
    if calls is not None:
        body["max_tool_calls"] = calls
    return hosted_tools(table, "/v1/responses", orjson.dumps(body))


def _table(tools: str) -> PriceTable:
    """A table of the [tools] of a price file, as PriceTable.from_config reads them."""
    data = tomllib.loads(tools)
    table = PriceTable({}, tools=shipped_tools(data))
    table.containers = shipped_containers(data)
    return table


# --- the price table ------------------------------------------------------------------------------------------


def test_the_shipped_table_prices_each_container_memory():
    t = PriceTable.from_config({})
    assert t.containers == SHIPPED
    assert t.tools["code_interpreter"] == GB1  # the default container's price, where one figure is read
    assert tool_prices(t)["code_interpreter_sessions"] == GB64  # calls a request does not show: the dearest


def test_a_price_file_sets_the_container_prices(make_gateway, fake, tmp_path):
    f = tmp_path / "prices.toml"
    f.write_text(
        '[tools]\nweb_search = 0.01\n\n[tools.code_interpreter]\nsource = "https://example.com/p"\n'
        'taken = "2026-01"\n"1g" = 0.05\n"4g" = 0.2\n'
    )
    srv = make_gateway(PRICE, KEYPLANE_PRICES_FILE=str(f))
    prices = srv.app.runtime.features.billing.prices
    assert prices.containers == {"1g": 50_000, "4g": 200_000} and prices.tools["code_interpreter"] == 50_000
    pid, key = _project(srv)
    _limit(srv, pid, 100)
    r = _post(srv, key, "/responses", _body({"type": "auto", "memory_limit": "4g"}))
    assert r.status_code == 200, r.text[:200]
    assert _spent(srv, pid)[0] == 200_000 + OUTPUT
    r = _post(srv, key, "/responses", _body({"type": "auto", "memory_limit": "16g"}))  # not in this table
    assert r.status_code == 403 and _code(r) == "cost_not_bounded" and "memory_limit" in r.text, r.text[:300]


def test_an_older_price_file_with_one_figure_prices_the_default_container_only():
    """`code_interpreter = 0.03` (a copy of an older shipped table) is the 1 GB price: a larger container, or
    one named by id, is not priced at it."""
    t = _table("[tools]\ncode_interpreter = 0.03\n")
    assert t.containers == {"1g": GB1} and t.tools == {"code_interpreter": GB1}
    assert _quote(t, {"type": "auto"}) == (1, {"code_interpreter_sessions": GB1}, None)
    assert _quote(t, {"type": "auto", "memory_limit": "1g"}) == (1, {"code_interpreter_sessions": GB1}, None)
    assert "memory_limit" in str(_quote(t, {"type": "auto", "memory_limit": "64g"}))
    assert "named by id" in str(_quote(t, "cntr_abc"))
    # A table built without prices by memory (tools only) reads the same way.
    bare = PriceTable({}, tools={"code_interpreter": GB1})
    assert container_price(bare, {"type": "auto"}) == GB1 and isinstance(container_price(bare, "cntr_abc"), str)


@pytest.mark.parametrize(
    "tools,error",
    [
        ('[tools.code_interpreter]\n"1gb" = 0.03\n', "memory limits"),
        ('[tools.code_interpreter]\n"1g" = -1\n', ">= 0"),
        ('[tools.code_interpreter]\n"1g" = "x"\n', "number"),
        ("[tools.code_interpreter]\nsource = 3\n", "string"),
    ],
)
def test_a_bad_container_price_is_refused_with_its_place(tools, error):
    with pytest.raises(PriceError, match=error) as e:
        _table(tools)
    assert "$.tools.code_interpreter" in str(e.value)


# --- the quote ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "container,micros",
    [
        ({"type": "auto"}, GB1),
        ({"type": "auto", "memory_limit": None}, GB1),
        ({"type": "auto", "memory_limit": "1g"}, GB1),
        ({"type": "auto", "memory_limit": "4g"}, GB4),
        ({"type": "auto", "memory_limit": "16g"}, GB16),
        ({"type": "auto", "memory_limit": "64g"}, GB64),
        ({"type": "auto", "memory_limit": "64G"}, GB64),
        ({"type": "auto", "file_ids": ["file_1"], "memory_limit": "16g"}, GB16),
        ("cntr_abc", GB64),  # named by id: its memory is unknown here, the dearest container
        (None, GB64),  # a shape keyplane does not read: the same
    ],
)
def test_each_session_is_reserved_at_the_price_of_its_memory(container, micros):
    t = PriceTable.from_config({})
    assert _quote(t, container, calls=3) == (3, {"code_interpreter_sessions": micros}, None)


def test_the_dearest_container_of_a_request_prices_its_sessions():
    t = PriceTable.from_config({})
    calls, per, _ = _quote(t, {"type": "auto"}, {"type": "auto", "memory_limit": "16g"}, calls=2)  # type: ignore[misc]
    assert calls == 2 and per == {"code_interpreter_sessions": GB16}


def test_keyplane_sets_max_tool_calls_and_reserves_each_at_the_memory_price():
    t = PriceTable.from_config({})
    calls, per, body = _quote(t, {"type": "auto", "memory_limit": "4g"}, calls=None)  # type: ignore[misc]
    assert calls == 8 and per == {"code_interpreter_sessions": GB4}
    assert orjson.loads(body)["max_tool_calls"] == 8


@pytest.mark.parametrize("memory", ["2g", "128g", "", 64, "64gb"])
def test_a_memory_the_table_does_not_price_cannot_be_bounded(memory):
    """As a hosted tool keyplane does not price: the quote is an estimate (cost_not_bounded under money
    controls), naming the field and the memories the table prices."""
    why = _quote(PriceTable.from_config({}), {"type": "auto", "memory_limit": memory})
    assert isinstance(why, str) and "`memory_limit`" in why and "`64g`" in why


def test_a_stored_prompt_reserves_the_dearest_container():
    t = PriceTable.from_config({})
    body = orjson.dumps({"prompt": {"id": "pmpt_1"}, "max_tool_calls": 2})
    assert hosted_tools(t, "/v1/responses", body)[1]["code_interpreter_sessions"] == GB64  # type: ignore[index]


def test_settle_bills_each_container_at_the_reserved_price():
    assert tool_cost({"code_interpreter_sessions": GB16}, {"code_interpreter_sessions": 2}) == {
        "code_interpreter_sessions": 2 * GB16
    }


# --- through the gateway --------------------------------------------------------------------------------------


def test_a_4g_container_is_reserved_and_billed_at_its_price(make_gateway, fake):
    """Reserved: one 4 GB session ($0.12) and 5 output tokens ($0.008): $0.128. A 12-cent limit refuses it
    before the upstream is called; a 13-cent one admits it, and the answer's container is billed $0.12."""
    srv = make_gateway(PRICE)
    pid, key = _project(srv)
    _limit(srv, pid, 12)
    body = _body({"type": "auto", "memory_limit": "4g"})
    fake.requests.clear()
    r = _post(srv, key, "/responses", body)
    assert r.status_code == 429 and fake.model_requests() == [], r.text[:200]
    _limit(srv, pid, 13)
    r = _post(srv, key, "/responses", body)
    assert r.status_code == 200, r.text[:200]
    assert [o["type"] for o in r.json()["output"]].count("code_interpreter_call") == 2  # one container
    assert fake.model_requests()[-1].json()["max_tool_calls"] == 1
    assert _spent(srv, pid)[0] == GB4 + OUTPUT


def test_a_64g_container_is_refused_under_a_limit_it_exceeds(make_gateway, fake):
    srv = make_gateway(PRICE)
    pid, key = _project(srv)
    _limit(srv, pid, 100)  # $1: one 64 GB session is $1.92
    fake.requests.clear()
    r = _post(srv, key, "/responses", _body({"type": "auto", "memory_limit": "64g"}))
    assert r.status_code == 429 and fake.model_requests() == [], r.text[:200]
    assert _spent(srv, pid)[0] == 0
    _limit(srv, pid, 200)
    r = _post(srv, key, "/responses", _body({"type": "auto", "memory_limit": "64g"}))
    assert r.status_code == 200 and _spent(srv, pid)[0] == GB64 + OUTPUT, r.text[:200]


def test_an_unpriced_memory_is_refused_under_money_controls_and_billed_dearest_without(make_gateway, fake):
    srv = make_gateway(PRICE)
    pid, key = _project(srv)
    body = _body({"type": "auto", "memory_limit": "2g"})
    r = _post(srv, key, "/responses", body)  # no money control: served (the provider judges the memory)
    assert r.status_code == 200, r.text[:200]
    assert _spent(srv, pid)[0] == GB64 + OUTPUT  # its container billed at the dearest price the table has
    _limit(srv, pid, 1000)
    fake.requests.clear()
    r = _post(srv, key, "/responses", body)
    assert r.status_code == 403 and _code(r) == "cost_not_bounded", r.text[:200]
    assert "memory_limit" in r.json()["error"]["message"] and fake.model_requests() == []


def test_a_container_named_by_id_is_reserved_at_the_dearest_price(make_gateway, fake):
    srv = make_gateway(PRICE)
    pid, key = _project(srv)
    _owned(srv, "cntr_mine", pid, "container")
    _limit(srv, pid, 100)  # below one 64 GB session: the container's memory is unknown, so refused
    fake.requests.clear()
    r = _post(srv, key, "/responses", _body("cntr_mine"))
    assert r.status_code == 429 and fake.model_requests() == [], r.text[:200]
    _limit(srv, pid, 200)
    r = _post(srv, key, "/responses", _body("cntr_mine"))
    assert r.status_code == 200 and _spent(srv, pid)[0] == GB64 + OUTPUT, r.text[:200]
