"""`keyplane providers ...` against the fake provider and a real store; config validation of [[providers]]."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from keyplane.cli import app
from keyplane.config import ConfigError
from keyplane.guard.rules import RuleError, config_rules, rule_from_json
from keyplane.testing.fake_org import Bucket
from tests.providers.conftest import PROJ_SECRET
from tests.support import make_settings

CONFIG = """
[[providers]]
name = "acme"
base_url = "{url}"
admin_key_env = "ACME_ADMIN_KEY"
backfill_days = 1

[[guard.rules]]
name = "acme-ceiling"
kind = "ceiling"
scope = "provider_key"
threshold = 100000
mode = "revoke"
dry_run = true
"""


@pytest.fixture
def cli(tmp_path, database_url, monkeypatch, fake_provider):
    home = tmp_path / "home"
    home.mkdir()
    (home / "keyplane.toml").write_text(CONFIG.format(url=fake_provider.base_url))
    monkeypatch.setenv("KEYPLANE_HOME", str(home))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", database_url)
    monkeypatch.setenv("ACME_ADMIN_KEY", fake_provider.fake.admin_key)
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        res = runner.invoke(app, list(args), catch_exceptions=False)
        assert res.exit_code == code, (res.stdout, res.stderr)
        assert fake_provider.fake.admin_key not in res.stdout + res.stderr
        return res

    return run


def test_check_sync_report(cli, fake_provider):
    cli("init", "--json")
    listed = json.loads(cli("providers", "list", "--json").stdout)
    assert listed == [
        {
            "name": "acme",
            "kind": "openai",
            "base_url": fake_provider.base_url,
            "admin_key_env": "ACME_ADMIN_KEY",
            "sync_interval": 300.0,
            "backfill_days": 1,
        }
    ]
    checked = json.loads(cli("providers", "check", "--json").stdout)
    assert checked[0]["ok"] and checked[0]["visible"]["api_key"] == 4
    assert "admin key works" in cli("providers", "check").stdout

    hour = int(time.time()) // 3600 * 3600
    fake_provider.fake.usage.append(Bucket(hour - 3600, "proj_data", "key_data1", "gpt-4o", 90000, 30000))
    synced = json.loads(cli("providers", "sync", "acme", "--json").stdout)[0]
    assert synced["changes"] == {"added": 12, "changed": 0, "removed": 0}
    assert synced["usage_rows"]["completions"] == 1
    [ev] = synced["events"]
    assert ev["rule"] == "acme-ceiling" and ev["action"] == "none" and ev["dry_run"]  # dry run: nothing deleted
    assert ev["figures"]["current"] == 120000 and "key_data1" in fake_provider.fake.key_ids()

    # Bob leaves, a key is deleted at the provider: the next sync records both in the history.
    fake_provider.fake.users[:] = [u for u in fake_provider.fake.users if u["id"] != "user_bob"]
    fake_provider.fake.api_keys["proj_data"] = [
        k for k in fake_provider.fake.api_keys["proj_data"] if k["id"] != "key_old"
    ]
    again = json.loads(cli("providers", "sync", "--json").stdout)[0]
    assert again["changes"]["removed"] == 2 and again["events"] == []  # the cooldown holds the dry-run finding

    report = json.loads(cli("providers", "report", "--json", "--unused-days", "30").stdout)[0]
    assert [k["id"] for k in report["keys_of_departed_users"]] == ["key_dflt"]
    assert [k["id"] for k in report["keys_in_default_project"]] == ["key_dflt"]
    assert [s["id"] for s in report["service_accounts_without_keys"]] == ["svc_idle"]
    assert [k["id"] for k in report["admin_keys_without_expiry"]] == ["admin_1"]
    assert [p["id"] for p in report["projects_without_spend_limit"]] == ["proj_data", "proj_default", "proj_web"]
    assert report["projects_spend_limit_unknown"] == [] and report["inventory"]["api_key"] == 3
    assert PROJ_SECRET not in json.dumps(report)
    text = cli("providers", "report", "acme").stdout
    assert "projects without spend limit: 3" in text and "3 api keys" in text


def test_unknown_provider_and_missing_key(cli, monkeypatch):
    cli("init", "--json")
    assert "no provider named" in cli("providers", "check", "nope", code=1).stderr
    monkeypatch.delenv("ACME_ADMIN_KEY")
    assert "ACME_ADMIN_KEY" in cli("providers", "check", code=1).stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[[providers]]\nname = "a"\nadmin_key_env = "sk-proj-abc"\n', "looks like a key"),
        (
            '[[providers]]\nname = "a"\nadmin_key_env = "K"\n[[providers]]\nname = "a"\nadmin_key_env = "K"\n',
            "duplicate",
        ),
        (
            '[[guard.rules]]\nname = "x"\nkind = "token_surge"\nscope = "provider_key"\n'
            'threshold = 3\nmode = "suspend"\n',
            "cannot be suspended",
        ),
        (
            '[[guard.rules]]\nname = "x"\nkind = "ceiling"\nscope = "provider_key"\nthreshold = 3\nwindow = "90m"\n'
            'mode = "alert"\n',
            "whole hours",
        ),
    ],
)
def test_config_validation(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        make_settings(tmp_path / "home", config_text=extra)


def test_provider_rules_stay_out_of_the_request_path_engine(tmp_path):
    s = make_settings(tmp_path / "home", config_text=CONFIG.format(url="http://127.0.0.1:9"))
    assert "acme-ceiling" not in config_rules(s.file.guard)
    with pytest.raises(RuleError, match=r"keyplane\.toml"):
        rule_from_json({"name": "x", "kind": "ceiling", "scope": "provider_key", "threshold": 1})
