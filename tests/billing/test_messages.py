"""Budget messages: one formatter (keyplane.fmt) for money and durations, pinned as a user reads them.

A refused request names what it would cost; "available" never shows more than the credit balance does;
the reset reads as a date and a countdown in days (4d7h12m0s), not 103h12m0s.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import openai
import pytest
from openai import OpenAI

from keyplane import errors, fmt
from keyplane.clock import FakeClock
from tests.billing.conftest import admin_http, flush

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}  # 8000 µ$
BIG = {**CHAT, "max_tokens": 20}  # reserves 32000 µ$
LIMIT = {"currency": "USD", "interval": "month"}
NOW = datetime(2026, 11, 26, 16, 48, tzinfo=UTC).timestamp()  # 4d7h12m before 2026-12-01 00:00 UTC


def test_fmt_money_rounds_in_the_stated_direction():
    assert fmt.usd(26_000, "down") == "$0.02"  # available: never more than there is
    assert fmt.usd(26_000, "up") == "$0.03"  # spent / may cost: never less
    assert fmt.usd(26_000) == "$0.03"
    assert fmt.usd(1_234_567_891, "down") == "$1,234.56"
    assert fmt.usd(2_000, "down") == "$0.0020"  # under a cent: four decimals
    assert fmt.usd(0) == "$0.00"
    assert fmt.usd_dollars(0.0042) == "$0.0042" and fmt.usd_dollars("x") == "-"
    assert fmt.usd_cents(4000) == "$40.00"


def test_fmt_durations():
    assert fmt.duration(4 * 86400 + 7 * 3600 + 12 * 60) == "4d7h12m0s"
    assert fmt.duration(727 * 3600 + 40 * 60 + 11.059) == "30d7h40m12s"  # rounded up, whole seconds
    assert fmt.duration(3600) == "1h0m0s" and fmt.duration(0.2) == "1s" and fmt.duration(0) == "0s"
    # rate-limit waits keep OpenAI's own (Go) form, with milliseconds
    assert fmt.go_duration(0.644) == "644ms" and fmt.go_duration(86.4) == "1m26.4s"
    e = errors.rate_limited("gpt-4o-mini", "project p", "RPM", 3, 3, 1, fmt.go_duration(20), 20)
    assert e.message.startswith(
        "Rate limit reached for gpt-4o-mini in project p on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
    )


def test_spend_limit_message_names_the_cost_and_resets_in_days(make_gateway, backend):
    srv = make_gateway(clock=None if backend else FakeClock(NOW))
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    with admin_http(srv) as h:
        assert (
            h.post(f"/projects/{srv.project_id}/spend_limit", json={**LIMIT, "threshold_amount": 5}).status_code == 200
        )
    for _ in range(3):
        client.chat.completions.create(**CHAT)  # 24000 µ$ spent
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**BIG)
    assert e.value.code == "project_spend_limit_exceeded"
    msg = e.value.body["message"]  # type: ignore[index]
    # Not used up ($0.026 left): the reservation is what does not fit, and the message says so (and how to reserve
    # less), not "reached".
    head = (
        f"This request may cost up to $0.04, more than the $0.02 left of the project spend limit of $0.05 per month "
        f"for project `Default project` ({srv.project_id}): $0.03 spent this month. A request reserves the most it "
        "may cost before it runs"
    )
    assert msg.startswith(head), msg
    assert "set a lower one to reserve less, or ask your keyplane administrator to raise the limit." in msg
    if not backend:  # the injected clock: an exact countdown
        assert msg.endswith("The limit resets on 2026-12-01 00:00 UTC (in 4d7h12m0s)."), msg
    else:
        assert re.search(r"\(in (\d+d)?\d+h\d+m\d+s\)\.$", msg), msg
    used = {**LIMIT, "threshold_amount": 2}  # below the 24000 µ$ spent: used up, "reached"
    with admin_http(srv) as h:
        assert h.post(f"/projects/{srv.project_id}/spend_limit", json=used).status_code == 200
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**CHAT)
    msg = e.value.body["message"]  # type: ignore[index]
    assert msg.startswith(
        f"You have reached the project spend limit of $0.02 per month for project `Default project` "
        f"({srv.project_id}): $0.03 spent this month, and this request may cost up to $0.0080. The limit resets "
    ), msg
    assert msg.endswith("Ask your keyplane administrator to raise it."), msg


def test_credit_message_agrees_with_the_balance(make_gateway):
    srv = make_gateway()
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    with admin_http(srv) as h:
        assert h.post("/credit_grants", json={"amount": 5}).status_code == 200  # 50000 µ$
    for _ in range(3):
        client.chat.completions.create(**CHAT)  # 24000 µ$ used, 26000 µ$ left
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**BIG)
    assert e.value.code == "insufficient_quota"
    assert (
        "(keyplane: the organization's prepaid credit is used up: $0.02 available of $0.05, and this "
        "request may cost up to $0.04. Ask your keyplane administrator for a credit grant.)"
    ) in e.value.message
    flush(srv)
    with admin_http(srv) as h:
        bal = h.get("/credit_balance").json()
    assert bal["available"] == 2 and bal["available_micros"] == 26_000  # the same $0.02, never $0.03


def test_the_dashboard_and_the_usage_cli_round_spend_up_and_balances_down(monkeypatch, tmp_path):
    """What the 429 message and `keyplane limits show` call spent ($0.0416 -> $0.05) is what `keyplane usage` and the
    dashboard show; a credit balance is never shown above what is left."""
    from typer.testing import CliRunner

    from keyplane.cli import app
    from keyplane.usage import cli as usage_cli
    from keyplane.web import base

    assert base.usd(0.0416) == fmt.usd(41_600, "up") == "$0.05"
    assert base.left(0.0416) == "$0.04"
    row = {"requests": 3, "errors": 0, "input_tokens": 9, "cached_tokens": 0, "output_tokens": 9, "cost_usd": 0.0416}
    monkeypatch.setattr(usage_cli, "run_store", lambda s, fn: [{**row, "model": "gpt-4o-mini", "avg_latency_ms": 1}])
    monkeypatch.setenv("KEYPLANE_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(app, ["usage"], catch_exceptions=False).stdout
    assert "$0.05" in out and "$0.04" not in out
