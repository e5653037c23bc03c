"""`keyplane prices check`: models seen in traffic with no price (issue 17 item 8)."""

from __future__ import annotations

import datetime
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
    res = runner.invoke(app, ["prices", "check", "--json", "--max-age-days", "36500"])
    assert res.exit_code == 0, res.stdout
    assert json.loads(res.stdout) == {
        "object": "list",
        "data": [],
        "days": 30,
        "undated": [],
        "stale": [],
        "max_age_days": 36500,
    }


def _day(days_ago: int) -> str:
    return (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=days_ago)).isoformat()


def test_undated_and_stale_entries_are_listed_and_fail_the_check_with_strict(tmp_path, monkeypatch):
    """The price file's entries without a source address or a date, or taken more than --max-age-days ago, and
    keyplane.toml's own entries likewise; exit 1 for them only with --strict."""
    monkeypatch.setenv("KEYPLANE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'kp.db'}")
    prices = tmp_path / "prices.toml"
    prices.write_text(
        f'source = "https://example.com/pricing"\ntaken = "{_day(20)}"\n\n'
        '[prices."fresh"]\ninput = 1\n\n'
        f'[prices."old"]\ninput = 1\ntaken = "{_day(400)[:7]}"\n\n'
        '[prices."notes"]\ninput = 1\nsource = "my notes"\n\n'
        '[prices."bad-date"]\ninput = 1\ntaken = "2025-13"\n'
    )
    config = tmp_path / "keyplane.toml"
    config.write_text(
        '[prices."mine"]\ninput = 2\n\n'
        f'[prices."mine-dated"]\ninput = 2\nsource = "https://example.com/mine"\ntaken = "{_day(1)}"\n'
    )
    monkeypatch.setenv("KEYPLANE_PRICES_FILE", str(prices))
    monkeypatch.setenv("KEYPLANE_CONFIG", str(config))
    runner = CliRunner()
    assert runner.invoke(app, ["init", "--org-name", "Acme", "--owner-email", "a@acme.test", "--json"]).exit_code == 0

    res = runner.invoke(app, ["prices", "check", "--json"])
    assert res.exit_code == 0, res.stdout  # nothing unpriced in traffic; provenance alone fails only --strict
    got = json.loads(res.stdout)
    assert got["max_age_days"] == 180
    assert [(e["model"], e["origin"], e["why"]) for e in got["undated"]] == [
        ("bad-date", "price file", "the date is not YYYY-MM or YYYY-MM-DD"),
        ("mine", "keyplane.toml", "no source address"),
        ("notes", "price file", "no source address"),
    ]
    assert [(e["model"], e["origin"]) for e in got["stale"]] == [("old", "price file")]
    assert got["stale"][0]["age_days"] >= 400

    assert runner.invoke(app, ["prices", "check", "--strict"]).exit_code == 1
    res = runner.invoke(app, ["prices", "check", "--max-age-days", "10", "--json"])
    assert sorted(e["model"] for e in json.loads(res.stdout)["stale"]) == ["fresh", "old"]  # the file's date: 20 days
    human = runner.invoke(app, ["prices", "check"], terminal_width=200)
    assert "undated" in human.stdout and "stale" in human.stdout and "old" in human.stdout, human.stdout

    # A table whose every entry has a source and a recent date passes --strict.
    prices.write_text(f'source = "https://example.com/pricing"\ntaken = "{_day(3)}"\n\n[prices."fresh"]\ninput = 1\n')
    config.write_text("")
    assert runner.invoke(app, ["prices", "check", "--strict"]).exit_code == 0
    helptext = runner.invoke(app, ["prices", "check", "--help"], terminal_width=200).stdout
    assert "--strict" in helptext and "--max-age-days" in helptext


def test_the_shipped_table_is_checked_against_its_date():
    """The shipped table has no undated entry; it is stale once its date is older than the threshold."""
    import time

    from keyplane.billing.prices_check import provenance_issues
    from keyplane.billing.prices_file import load_data

    data = load_data()
    undated, stale = provenance_issues(data, {}, time.time(), 36500)
    assert undated == [] and stale == []
    taken = datetime.date.fromisoformat(data["taken"] + "-01")
    later = datetime.datetime.combine(taken + datetime.timedelta(days=200), datetime.time(), datetime.UTC).timestamp()
    _, stale = provenance_issues(data, {}, later, 180)
    assert "gpt-4o-mini" in {e["model"] for e in stale}
    assert "gpt-4o-realtime-preview-2024-10-01" in {e["model"] for e in stale}  # its own, older date
