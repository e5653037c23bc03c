"""Issue 14 item 2: the dashboard totals every usage kind (embeddings too) and agrees with `keyplane usage`
and the Usage API."""

from __future__ import annotations

import html
import json
import re
import time

import httpx
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from keyplane import fmt
from keyplane.cli import app
from keyplane.usage.cli import collect
from tests.support import Gateways, RunningServer
from tests.usage.support import drain
from tests.web.conftest import OffsetClock, Web, with_owner_password

CONFIG = (
    '[[upstreams]]\nname = "demo"\nbase_url = "demo"\nmodels = ["demo-*"]\n\n'
    '[prices."demo-*"]\ninput = 1000\noutput = 2000\n'
)  # USD per 1M tokens: costs worth seeing


@pytest.fixture
def priced_server(gateways: Gateways, clock: OffsetClock) -> RunningServer:
    return gateways.start(CONFIG, clock, seed=with_owner_password)


def _text(page: str, id_: str) -> str:
    m = re.search(rf'id="{id_}">([^<]*)<', page)
    assert m, (id_, page[:3000])
    return html.unescape(m.group(1)).strip()


def test_embeddings_and_chat_agree_everywhere(priced_server, clock, monkeypatch):
    srv = priced_server
    client = OpenAI(base_url=f"{srv.base_url}/v1", api_key=srv.api_key, max_retries=0)
    chat = client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hello there"}])
    emb = client.embeddings.create(model="demo-embed", input=["one two three", "four five"])
    emb2 = client.embeddings.create(model="demo-embed", input="six seven eight nine")
    assert chat.usage and emb.usage and emb2.usage
    n_in = chat.usage.prompt_tokens + emb.usage.prompt_tokens + emb2.usage.prompt_tokens
    n_out = chat.usage.completion_tokens
    drain(srv)

    # the Usage API: completions + embeddings, and the costs
    start = int(time.time()) - 86400
    with httpx.Client(
        base_url=f"{srv.base_url}/v1/organization", headers={"Authorization": f"Bearer {srv.admin_key}"}
    ) as h:
        api_req = api_in = api_out = 0
        for kind in ("completions", "embeddings"):
            for b in h.get(f"/usage/{kind}", params={"start_time": start, "limit": 2}).json()["data"]:
                for r in b["results"]:
                    api_req += r["num_model_requests"]
                    api_in += r["input_tokens"]
                    api_out += r.get("output_tokens", 0)
        costs = h.get("/costs", params={"start_time": start, "limit": 2}).json()["data"]
        api_cost = sum(float(r["amount"]["value"]) for b in costs for r in b["results"])
    assert (api_req, api_in, api_out) == (3, n_in, n_out)
    assert api_cost > 0

    # the CLI: `keyplane usage --since 1h --json` (its report, then the command itself)
    async def report() -> list[dict]:
        async with srv.app.runtime.read() as s:
            now = int(time.time())
            return await collect(s, srv.settings, start=now - 3600, end=now + 1, by="model", project=None, key=None)

    rows = srv.call(report())
    total = {f: sum(r[f] for r in rows) for f in ("requests", "input_tokens", "output_tokens", "cost_usd")}
    assert (total["requests"], total["input_tokens"], total["output_tokens"]) == (3, n_in, n_out)
    assert total["cost_usd"] == pytest.approx(api_cost)

    # the dashboard: Usage page totals and Overview, the same numbers and the same money
    w = Web(srv, clock)
    try:
        w.sign_in()
        page = w.get("/usage").text
        assert _text(page, "total-requests") == "3"
        assert _text(page, "total-input") == f"{n_in:,}" and _text(page, "total-output") == f"{n_out:,}"
        assert _text(page, "total-cost") == fmt.usd_dollars(total["cost_usd"], "up") == fmt.usd_dollars(api_cost, "up")
        assert "demo-embed" in page  # the embeddings row is listed
        over = w.get("/").text
        assert _text(over, "requests-month") == "3"
        assert _text(over, "tokens-month").startswith(f"{n_in + n_out:,}")
        assert _text(over, "spend-month") == fmt.usd_dollars(api_cost, "up")
        csv_text = w.get("/usage.csv").text
        assert "demo-embed" in csv_text
    finally:
        w.close()
    monkeypatch.setenv("KEYPLANE_HOME", str(srv.settings.home))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", srv.settings.database_url)
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    res = CliRunner().invoke(app, ["usage", "--since", "1h", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.stdout
    cli_total = json.loads(res.stdout)["total"]
    assert {k: cli_total[k] for k in ("requests", "input_tokens", "output_tokens")} == {
        k: total[k] for k in ("requests", "input_tokens", "output_tokens")
    }
    assert cli_total["cost_usd"] == pytest.approx(api_cost)
    table = CliRunner().invoke(app, ["usage", "--since", "1h"], catch_exceptions=False).stdout
    assert fmt.usd_dollars(api_cost, "up") in table  # the CLI shows money as the dashboard does
