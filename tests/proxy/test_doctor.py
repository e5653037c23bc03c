"""`keyplane doctor`: the troubleshooting guide as a command, against a real gateway."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from keyplane import doctor, keys
from tests.proxy.conftest import admin, new_key
from tests.proxy.test_resilience import closed_port_url

DEMO = '[[upstreams]]\nname = "demo"\nbase_url = "demo"\nmodels = ["demo-*"]\n'


@pytest.fixture
def srv(make_gateway):
    return make_gateway(DEMO)


def failed(report) -> dict[str, doctor.Check]:
    return {c.name: c for c in report.checks if not c.ok}


def test_healthy_key(srv):
    r = doctor.diagnose(srv.v1, srv.api_key, "--key")
    assert r.ok, r.checks
    assert r.key_info["project"]["id"] == srv.project_id and r.key_info["status"] == "active"
    assert r.key_info["permissions"] == "all"
    text = " ".join(c.detail for c in r.checks)
    assert "demo-echo" in text and srv.project_id in text


def test_revoked_suspended_and_scopes(srv):
    k = new_key(srv)
    admin(srv, "POST", f"/api_keys/{k['id']}/revoke", {"reason": "leaked in CI logs"})
    r = doctor.diagnose(srv.v1, k["value"], "--key")
    bad = failed(r)["key"]
    assert "revoked (leaked in CI logs)" in bad.detail and "new key" in bad.fix

    k = new_key(srv)
    admin(srv, "POST", f"/projects/{srv.project_id}/api_keys/{k['id']}/suspend", {"reason": "odd traffic"})
    bad = failed(doctor.diagnose(srv.v1, k["value"], "--key"))["key"]
    assert "suspended" in bad.detail and "keys resume" in bad.fix

    k = new_key(srv, permissions=["api.responses.write"])
    r = doctor.diagnose(srv.v1, k["value"], "--key")
    assert r.key_info["scopes"] == ["api.responses.read", "api.responses.write"]
    bad = failed(r)["models"]
    assert "403" in bad.detail and "api.model.read" in bad.detail and "permissions" in bad.fix


def test_local_checks_need_no_server():
    url = closed_port_url()
    good = keys.generate("svc")
    typo = good[:-1] + ("x" if good[-1] != "x" else "y")
    assert "checksum" in failed(doctor.diagnose(url, typo, "--key"))
    assert "OpenAI key" in failed(doctor.diagnose(url, "sk-proj-" + "a" * 70 + "T3BlbkFJ" + "b" * 70, "x"))[
        "format"].detail
    assert "admin key" in failed(doctor.diagnose(url, keys.generate("admin"), "x"))["format"].detail
    assert "whitespace" in failed(doctor.diagnose(url, good + "\n", "x"))
    assert "key" in failed(doctor.diagnose(url, None, None))
    bad = failed(doctor.diagnose(url, good, "--key"))["server"]
    assert "Could not reach" in bad.detail and "keyplane serve" in bad.fix


def test_explains_quota_vs_rate_limit():
    quota = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                       "code": "insufficient_quota", "param": None}}
    what, fix = doctor.explain(429, quota, {"x-should-retry": "false"})
    assert what.startswith("Quota") and "Waiting does not help" in fix
    rate = {"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "requests",
                      "code": "rate_limit_exceeded", "param": None}}
    what, fix = doctor.explain(429, rate, {"retry-after-ms": "644"})
    assert what.startswith("Rate limit") and "Waiting helps" in fix and "0.644s" in fix
    spend = {"error": {"message": "Project spend limit", "type": "insufficient_quota",
                       "code": "project_spend_limit_exceeded", "param": None}}
    assert doctor.explain(429, spend, {})[0].startswith("Quota")
    assert "/v1" in doctor.explain(404, {"error": {"message": "Invalid URL"}}, {})[1]


def test_cli_json_and_env(srv, monkeypatch):
    app = typer.Typer()
    doctor.register(app)
    app.command("noop")(lambda: None)  # a second command so that `doctor` is a sub-command
    runner = CliRunner()
    res = runner.invoke(app, ["doctor", "--base-url", srv.v1, "--key", srv.api_key, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["ok"] and out["key_source"] == "--key" and out["key"] == keys.mask(srv.api_key)

    monkeypatch.setenv("OPENAI_BASE_URL", srv.v1)
    monkeypatch.setenv("OPENAI_API_KEY", keys.generate("proj"))
    res = runner.invoke(app, ["doctor"])
    assert res.exit_code == 1
    assert "Incorrect API key provided" in res.output and "$OPENAI_API_KEY" in res.output
