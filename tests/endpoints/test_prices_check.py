"""`keyplane prices check`: models seen in traffic with no price (issue 17 item 8)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from keyplane.billing.prices import PriceTable
from keyplane.billing.prices_check import unpriced
from keyplane.cli import app
from tests.usage.support import drain


def test_unpriced_models_in_traffic_are_listed(make_gateway, fake):
    srv = make_gateway()
    from openai import OpenAI

    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="fake-new-model", messages=[{"role": "user", "content": "hi"}])
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    client.embeddings.create(model="text-embedding-3-small", input="x")  # priced by the shipped table
    drain(srv)

    async def go():
        async with srv.app.runtime.read() as s:
            return await unpriced(s, PriceTable.from_config(srv.app.runtime.settings.file.prices), 0)

    found = srv.call(go())
    assert [(e["model"], e["requests"], e["kinds"]) for e in found] == [("fake-new-model", 3, ["completions"])]
    assert found[0]["last_seen"] > 0


def test_the_cli_says_so_in_json_and_exits_0_when_all_are_priced(tmp_path, monkeypatch):
    monkeypatch.setenv("KEYPLANE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'kp.db'}")
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["init", "--org-name", "Acme", "--owner-email", "a@acme.test", "--json"]).exit_code == 0
    res = runner.invoke(app, ["prices", "check", "--json"])
    assert res.exit_code == 0, res.stdout
    assert json.loads(res.stdout) == {"object": "list", "data": [], "days": 30}
