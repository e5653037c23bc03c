"""`keyplane credit` and `keyplane limits` against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from keyplane.cli import app


@pytest.fixture
def cli(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("KEYPLANE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", database_url)
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        res = runner.invoke(app, list(args), catch_exceptions=False)
        assert res.exit_code == code, (res.stdout, res.stderr)
        return res

    run("init", "--json")
    return run


def _json(res):
    return json.loads(res.stdout)


def test_credit(cli):
    g = _json(cli("credit", "grant", "25.50", "--note", "PO 42", "--expires-at", "2099-01-01", "--json"))
    assert g["object"] == "organization.credit_grant" and g["amount"] == 2550 and g["note"] == "PO 42"
    assert g["expires_at"] == 4070908800
    assert "granted $1.00" in cli("credit", "grant", "1").stdout
    b = _json(cli("credit", "balance", "--json"))
    assert (b["granted"], b["used"], b["available"], b["enforced"]) == (2650, 0, 2650, True)
    assert "available  $26.50" in cli("credit", "balance").stdout
    assert [x["amount"] for x in _json(cli("credit", "list", "--json"))] == [2550, 100]
    for bad in ("-5", "abc", "1.005", "0"):
        res = cli("credit", "grant", bad, code=1) if bad != "-5" else cli("credit", "grant", "--", bad, code=1)
        assert "error" in res.stderr
    assert len(_json(cli("credit", "list", "--json"))) == 2


def test_limits(cli):
    d = _json(cli("limits", "set", "--project", "Default project", "--spend-limit", "10", "--json"))
    assert d["scope"] == "project" and d["spend_limit"]["threshold_amount"] == 1000
    assert d["spend_limit"]["enforcement"]["status"] == "enforcing"
    d = _json(
        cli("limits", "set", "-p", "Default project", "-m", "gpt-4o-mini", "--rpm", "60", "--tpd", "5000", "--json")
    )
    (rl,) = d["rate_limits"]
    assert (rl["id"], rl["max_requests_per_1_minute"], rl["max_tokens_per_1_day"], rl["source"]) == (
        "rl-gpt-4o-mini",
        60,
        5000,
        "custom",
    )
    shown = _json(cli("limits", "show", "-p", "Default project", "--json"))
    by = {r["model"]: r for r in shown["rate_limits"]}
    assert by["gpt-4o-mini"]["max_requests_per_1_minute"] == 60 and by["gpt-4o"]["source"] == "tier free"
    assert shown["spent"] == 0 and shown["spent_micros"] == 0 and shown["tier"] == "free"
    out = cli("limits", "show", "-p", "Default project").stdout
    assert "spent this month  $0.00" in out
    assert "spend limit       $10.00 per month (enforcing)" in out and "gpt-4o-mini" in out
    # organization and key limits
    d = _json(cli("limits", "set", "--spend-limit", "100", "--inactive", "--json"))
    assert d["scope"] == "organization" and d["spend_limit"]["enforcement"]["status"] == "inactive"
    key = _json(cli("keys", "create", "-p", "Default project", "-n", "k", "--json"))["id"]
    d = _json(
        cli(
            "limits",
            "set",
            "-p",
            "Default project",
            "-k",
            key,
            "--spend-limit",
            "2",
            "-m",
            "demo-echo",
            "--rpm",
            "5",
            "--json",
        )
    )
    assert d["scope"] == "api_key" and d["spend_limit"]["object"] == "api_key.spend_limit"
    assert [r["model"] for r in d["rate_limits"]] == ["demo-echo"]
    d = _json(cli("limits", "set", "-p", "Default project", "-m", "gpt-4o-mini", "--reset", "--json"))
    assert d["rate_limits"][0]["source"] == "tier free"
    assert _json(cli("limits", "set", "-p", "Default project", "--no-spend-limit", "--json"))["spend_limit"] is None
    types = [e["type"] for e in _json(cli("audit", "--json", "--limit", "7"))]
    assert types[:3] == ["spend_limit.deleted", "rate_limit.deleted", "rate_limit.updated"]
    entry = _json(cli("audit", "--json", "--limit", "1"))[0]
    assert entry["actor"]["type"] == "cli"


@pytest.mark.parametrize(
    "args,needle",
    [
        (("limits", "set", "-p", "nope", "--spend-limit", "5"), "No project"),
        (("limits", "set", "-p", "Default project", "-m", "no-such-model", "--rpm", "5"), "No rate limit"),
        (("limits", "set", "-p", "Default project", "--rpm", "5"), "need --model"),
        (("limits", "set", "--spend-limit", "ten"), "amount in USD"),
        (
            (
                "limits",
                "set",
            ),
            "Nothing to set",
        ),
        (("limits", "show", "-k", "key_x"), "--key needs --project"),
    ],
)
def test_limits_errors(cli, args, needle):
    res = cli(*args, code=1)
    assert needle in res.stderr
    assert _json(cli("limits", "show", "-p", "Default project", "--json"))["spend_limit"] is None
