"""service_tier priced with its factor from the price table, and the long-context tier (issue 17 item 7)."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from keyplane.billing.price import MICROS, Price
from keyplane.billing.prices import PriceTable
from tests.billing.conftest import admin_http, billing_of

HI = [{"role": "user", "content": "hi"}]


def _spent(srv) -> int:
    return srv.call(billing_of(srv).spent("project", srv.project_id))[0]


def test_flex_is_half_priority_its_factor_and_an_unknown_tier_is_refused_under_limits(make_gateway, fake):
    srv = make_gateway()  # gpt-4o-mini: $0 input, $1600 per 1M output; 5 output tokens = 8000
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5, service_tier="flex")
    assert _spent(srv) == 4000
    client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=5, service_tier="priority")
    assert _spent(srv) == 4000 + 5 * 2672  # gpt-4o-mini priority: 1.67 x
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5, service_tier="auto")
    assert _spent(srv) == 4000 + 5 * 2672 + 8000
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5, service_tier="scale")
    with admin_http(srv) as h:
        r = h.post(
            f"/projects/{srv.project_id}/spend_limit",
            json={"currency": "USD", "interval": "month", "threshold_amount": 100},
        )
        assert r.status_code == 200
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5, service_tier="scale")
    assert e.value.code == "cost_not_bounded"


def test_priority_reserves_its_factor():
    """A budget is held to the tier's price: the reservation is scaled as the bill is."""
    t = PriceTable.from_config({})
    gpt5 = t.lookup("gpt-5")
    assert t.tier_factor("gpt-5", "priority") == 2 * MICROS and t.tier_factor("gpt-5-2025-08-07", "flex") == MICROS // 2
    assert gpt5.scaled(2 * MICROS).max_cost(1000, 1000) == 2 * gpt5.max_cost(1000, 1000)
    assert t.tier_factor("gpt-5", "scale") is None and t.tier_factor("gpt-5", None) == MICROS


def test_long_context_tier_prices_by_prompt_size():
    p = Price(input=1_000_000, cached_input=100_000, output=2_000_000, long_above=1000, long_factor=2 * MICROS)
    assert p.cost(1000, 0, 10) == 1000 + 20  # at the threshold: standard
    assert p.cost(1001, 0, 10) == 2 * (1001 + 20)  # above: the whole request at the long-context rates
    assert p.max_cost(5000, 10) == 2 * (5000 + 20)


def test_long_context_tier_may_price_output_apart():
    """gpt-5.4 past 272K prompt tokens: input at 2x, output at 1.5x, the whole request (the shipped table)."""
    t = PriceTable.from_config({})
    p = t.lookup("gpt-5.4-2026-03-05")
    assert (p.long_above, p.long_factor, p.long_output_factor) == (272_000, 2 * MICROS, 3 * MICROS // 2)
    assert p.cost(272_000, 0, 1000) == 272_000 * 2_500_000 // MICROS + 1000 * 15  # at the threshold: standard
    assert p.cost(272_001, 1, 1000) == -(-(272_000 * 5 + 1 * 0.5 + 1000 * 22.5) // 1)  # micro-dollars
    assert p.max_cost(300_000, 128_000) == 300_000 * 5 + 128_000 * 45 // 2
    assert t.lookup("gpt-5.4-mini").long_above is None
    # A price file's [long_context] entry is read strictly.
    from keyplane.billing.prices_file import PriceError, shipped_extras

    assert shipped_extras({"long_context": {"m": {"above": 10, "factor": 2}}})[1] == {"m": (10, 2 * MICROS, None)}
    with pytest.raises(PriceError, match="output_factr"):
        shipped_extras({"long_context": {"m": {"above": 10, "output_factr": 1.5}}})
