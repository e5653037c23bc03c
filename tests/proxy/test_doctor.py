"""`keyplane doctor`: the troubleshooting guide as a command, against a real gateway."""

from __future__ import annotations

import json
import re

import openai
import pytest
import typer
from typer.testing import CliRunner

from keyplane import doctor, keys
from keyplane.cli.doctor import doctor as doctor_command
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
    assert (
        "OpenAI key"
        in failed(doctor.diagnose(url, "sk-proj-" + "a" * 70 + "T3BlbkFJ" + "b" * 70, "x"))["format"].detail
    )
    assert "admin key" in failed(doctor.diagnose(url, keys.generate("admin"), "x"))["format"].detail
    assert "whitespace" in failed(doctor.diagnose(url, good + "\n", "x"))
    assert "key" in failed(doctor.diagnose(url, None, None))
    bad = failed(doctor.diagnose(url, good, "--key"))["server"]
    assert "Could not reach" in bad.detail and "keyplane serve" in bad.fix


def test_explains_quota_vs_rate_limit():
    quota = {
        "error": {
            "message": "You exceeded your current quota",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
            "param": None,
        }
    }
    what, fix = doctor.explain(429, quota, {"x-should-retry": "false"})
    assert what.startswith("Quota") and "Waiting does not help" in fix
    rate = {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini",
            "type": "requests",
            "code": "rate_limit_exceeded",
            "param": None,
        }
    }
    what, fix = doctor.explain(429, rate, {"retry-after-ms": "644"})
    assert what.startswith("Rate limit") and "Waiting helps" in fix and "0.644s" in fix
    spend = {
        "error": {
            "message": "Project spend limit",
            "type": "insufficient_quota",
            "code": "project_spend_limit_exceeded",
            "param": None,
        }
    }
    assert doctor.explain(429, spend, {})[0].startswith("Quota")
    assert "/v1" in doctor.explain(404, {"error": {"message": "Invalid URL"}}, {})[1]


def test_cli_json_and_env(srv, monkeypatch):
    app = typer.Typer()
    app.command("doctor")(doctor_command)
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


def test_base_url_without_v1_is_accepted(srv):
    r = doctor.diagnose(srv.base_url, srv.api_key, "--key")  # http://127.0.0.1:PORT, as a newcomer types it
    assert r.ok, r.checks
    assert r.base_url == srv.v1 and r.key_info["project"]["id"] == srv.project_id
    note = {c.name: c for c in r.checks}["base_url"]
    assert f"OPENAI_BASE_URL={srv.v1}" in note.detail
    assert "models" in {c.name for c in r.checks}
    assert doctor.diagnose(srv.v1 + "/", srv.api_key, "--key").ok


@pytest.fixture
def html_site():
    """A server that answers every path with a web page (a dashboard, a proxy's error page)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><html><body><h1>Sign in</h1><script>secret()</script></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_html_answer_is_summarized_never_printed(html_site):
    key = keys.generate("svc")
    r = doctor.diagnose(html_site, key, "--key")
    bad = failed(r)["key"]
    assert "not a keyplane/OpenAI API answer (text/html)" in bad.detail and "/v1" in bad.fix
    assert not r.ok

    app = typer.Typer()
    app.command("doctor")(doctor_command)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["doctor", "--base-url", html_site, "--key", key])
    assert res.exit_code == 1
    assert "not a keyplane/OpenAI API answer (text/html)" in " ".join(res.output.split())
    assert "<" not in res.output and "Sign in" not in res.output
    res = CliRunner().invoke(app, ["doctor", "--base-url", html_site + "/v1", "--key", key, "--json"])
    assert "<html" not in res.output and "text/html" in res.output


def test_key_that_cannot_make_model_requests(srv):
    """A read-only key lists models fine, yet every model call would answer 403: doctor says so, and how to fix it."""
    k = new_key(srv, permissions="read_only")
    r = doctor.diagnose(srv.v1, k["value"], "--key")
    assert not r.ok
    bad = failed(r)
    assert set(bad) == {"model_requests"}, r.checks  # /v1/models itself works
    assert "api.model.request" in bad["model_requests"].detail and "403" in bad["model_requests"].detail
    assert f"`keyplane keys permissions {k['id']} all`" in bad["model_requests"].fix

    app = typer.Typer()
    app.command("doctor")(doctor_command)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["doctor", "--base-url", srv.v1, "--key", k["value"]])
    assert res.exit_code == 1 and "All checks passed" not in res.output
    assert "model_requests" in res.output and "keyplane keys permissions" in res.output

    ok = {c.name: c for c in doctor.diagnose(srv.v1, srv.api_key, "--key").checks}["model_requests"]
    assert ok.ok


def test_project_over_its_spend_limit(srv, monkeypatch):
    """With an admin key, doctor reads the spend limits (GETs only) and names the one that refuses model calls."""
    admin(srv, "POST", f"/projects/{srv.project_id}/spend_limit", {"threshold_amount": 0})
    plain = doctor.diagnose(srv.v1, srv.api_key, "--key")
    assert plain.ok  # the key alone cannot read them: said, not failed
    assert "--admin-key" in {c.name: c for c in plain.checks}["budget"].detail

    r = doctor.diagnose(srv.v1, srv.api_key, "--key", admin_key=srv.admin_key)
    bad = failed(r)["budget"]
    assert "spend limit" in bad.detail and srv.project_id in bad.detail and "project_spend_limit_exceeded" in bad.detail
    assert "Waiting does not help" in bad.fix
    assert f"`keyplane limits set --project {srv.project_id} --spend-limit USD`" in bad.fix

    monkeypatch.setenv("KEYPLANE_ADMIN_KEY", srv.admin_key)  # what the CLI reads when --admin-key is not given
    app = typer.Typer()
    app.command("doctor")(doctor_command)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["doctor", "--base-url", srv.v1, "--key", srv.api_key, "--json"])
    assert res.exit_code == 1
    assert any(c["name"] == "budget" and not c["ok"] for c in json.loads(res.output)["checks"])

    admin(srv, "POST", f"/projects/{srv.project_id}/spend_limit", {"threshold_amount": 5000})
    ok = {c.name: c for c in doctor.diagnose(srv.v1, srv.api_key, "--key", admin_key=srv.admin_key).checks}["budget"]
    assert ok.ok and "$50.00" in ok.detail


def test_credit_used_up(make_gateway):
    srv = make_gateway(DEMO + "[credit]\nenforce = true\n")  # enforced credit, none granted
    r = doctor.diagnose(srv.v1, srv.api_key, "--key", admin_key=srv.admin_key)
    bad = failed(r)["budget"]
    assert "prepaid credit is used up" in bad.detail and "`keyplane credit grant AMOUNT_USD`" in bad.fix


def test_a_limit_not_used_up_is_not_reported_reached(make_gateway):
    """Spend under a cent of a one-cent limit: the proxy still serves (its 429 compares micro-dollars), so doctor does
    not say "reached" (the admin API's whole cents, rounded up, read 1 of 1); it shows the spend as the 429s do, and
    says that a call without an output limit reserves the model's largest output."""
    srv = make_gateway(DEMO + '[prices."demo-*"]\ninput = 100\noutput = 100\n')
    admin(srv, "POST", f"/projects/{srv.project_id}/spend_limit", {"threshold_amount": 1})
    c = openai.OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    c.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    r = doctor.diagnose(srv.v1, srv.api_key, "--key", admin_key=srv.admin_key)
    budget = {ch.name: ch for ch in r.checks}["budget"]
    assert budget.ok, budget
    assert re.search(r"\$0\.00\d\d of \$0\.01 this month", budget.detail), budget.detail
    assert "max_tokens" in budget.detail
    c.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hi"}], max_tokens=20)  # served


def test_the_summary_says_what_was_not_checked(srv):
    """Without an admin key, spend limits and credit are not checked: the summary says so, not a bare "All checks
    passed" (exit status 0 all the same: nothing was found wrong)."""
    app = typer.Typer()
    app.command("doctor")(doctor_command)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["doctor", "--base-url", srv.v1, "--key", srv.api_key])
    assert res.exit_code == 0
    assert "All checks passed, except what was not checked: spend limits and prepaid credit" in res.output
    res = CliRunner().invoke(app, ["doctor", "--base-url", srv.v1, "--key", srv.api_key, "--admin-key", srv.admin_key])
    assert res.exit_code == 0 and "All checks passed.\n" in res.output
    skipped = [c for c in doctor.diagnose(srv.v1, srv.api_key, "--key").to_dict()["checks"] if c["skipped"]]
    assert [c["name"] for c in skipped] == ["budget"]
