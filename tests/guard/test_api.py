"""The kill switch's admin API (rules, events), the audit log and the CLI, through a real server."""

from __future__ import annotations

import json

import httpx
import pytest

from keyplane.clock import FakeClock
from keyplane.config import ConfigError
from tests.support import init_org, make_settings


@pytest.fixture
def http(server):
    with httpx.Client(
        base_url=server.v1 + "/organization/guard", headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=10
    ) as c:
        yield c


def test_defaults_are_listed(http):
    r = http.get("/rules")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["has_more"] is False
    assert [d["name"] for d in body["data"]] == ["error-spike", "token-surge"]
    surge = body["data"][1]
    assert surge == {
        **surge,
        "object": "guard.rule",
        "id": "token-surge",
        "kind": "token_surge",
        "scope": "key",
        "window": "1h",
        "threshold": 3.0,
        "metric": "tokens",
        "min_volume": 20000,
        "mode": "suspend",
        "cooldown": "1h",
        "dry_run": False,
        "source": "default",
    }
    assert body["first_id"] == "error-spike" and body["last_id"] == "token-surge"


def test_rules_round_trip(http, server):
    new = {
        "name": "cap",
        "kind": "ceiling",
        "scope": "key",
        "window": "1h",
        "threshold": 100,
        "metric": "tokens",
        "mode": "revoke",
        "cooldown": "30m",
        "dry_run": True,
    }
    r = http.post("/rules", json=new)
    assert r.status_code == 200, r.text
    assert r.json() == {**r.json(), **new, "source": "api", "object": "guard.rule"}
    assert http.get("/rules/cap").json()["threshold"] == 100
    r = http.post("/rules/cap", json={"threshold": 250, "dry_run": False})
    assert r.status_code == 200 and r.json()["threshold"] == 250 and r.json()["mode"] == "revoke"
    assert http.get("/rules/cap").json()["dry_run"] is False
    # A shipped rule changed over the API becomes an API rule; deleting a shipped rule sticks.
    assert http.post("/rules/token-surge", json={"mode": "alert"}).json()["source"] == "api"
    assert http.delete("/rules/error-spike").json() == {
        "object": "guard.rule.deleted",
        "id": "error-spike",
        "deleted": True,
    }
    assert http.get("/rules/error-spike").status_code == 404
    page1 = http.get("/rules", params={"limit": 1}).json()
    assert [d["name"] for d in page1["data"]] == ["cap"] and page1["has_more"] is True
    page2 = http.get("/rules", params={"limit": 1, "after": "cap"}).json()
    assert [d["name"] for d in page2["data"]] == ["token-surge"] and page2["has_more"] is False
    assert http.delete("/rules/cap").status_code == 200
    assert [d["name"] for d in http.get("/rules").json()["data"]] == ["token-surge"]
    # The running guard took every change (same instance: at once).
    guard = server.app.runtime.features.guard
    assert list(guard.rules) == ["token-surge"] and guard.rules["token-surge"].mode == "alert"
    # Each change is in the audit log.
    with httpx.Client(
        base_url=server.v1 + "/organization", headers={"Authorization": f"Bearer {server.admin_key}"}
    ) as c:
        types = [e["type"] for e in c.get("/audit_logs", params={"limit": 10}).json()["data"]]
    assert types[:5] == [
        "guard.rule.deleted",
        "guard.rule.deleted",
        "guard.rule.updated",
        "guard.rule.updated",
        "guard.rule.created",
    ]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "x", "kind": "meteor", "threshold": 1}, "kind"),
        ({"name": "x", "kind": "ceiling", "threshold": 1, "window": "1x"}, "window"),
        ({"name": "x", "kind": "ceiling", "threshold": 1, "cooldown": "soon"}, "cooldown"),
        ({"name": "x", "kind": "error_spike", "threshold": 1.5}, "threshold"),
        ({"name": "x", "kind": "token_surge", "threshold": -1}, "threshold"),
        ({"name": "x", "kind": "token_surge", "threshold": 3, "mode": "explode"}, "mode"),
        ({"name": "x", "kind": "token_surge", "threshold": 3, "scope": "org"}, "scope"),
        ({"name": "x", "kind": "token_surge", "threshold": "high"}, "threshold"),
        ({"name": "x", "kind": "token_surge"}, "threshold"),
        ({"kind": "token_surge", "threshold": 3}, "name"),
        ({"name": "bad name!", "kind": "token_surge", "threshold": 3}, "name"),
        ({"name": "x", "kind": "token_surge", "threshold": 3, "min_volume": -5}, "min_volume"),
        ({"name": "x", "kind": "error_spike", "threshold": 0.5, "metric": "tokens"}, "metric"),
        ({"name": "x", "kind": "token_surge", "threshold": 3, "colour": "red"}, "colour"),
        ({"name": "token-surge", "kind": "token_surge", "threshold": 3}, "name"),  # duplicate
    ],
)
def test_bad_rules_are_refused_naming_the_field(http, body, field):
    before = http.get("/rules").json()
    r = http.post("/rules", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field, err
    assert err["type"] == "invalid_request_error"
    assert http.get("/rules").json() == before


def test_bad_update_changes_nothing(http):
    before = http.get("/rules/token-surge").json()
    r = http.post("/rules/token-surge", json={"window": "1x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "window"
    r = http.post("/rules/token-surge", json={"name": "other"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"
    assert http.get("/rules/token-surge").json() == before
    assert http.post("/rules/nope", json={"threshold": 1}).status_code == 404
    assert http.delete("/rules/nope").status_code == 404


def test_rules_need_an_admin_key(server):
    r = httpx.get(server.v1 + "/organization/guard/rules", headers={"Authorization": f"Bearer {server.api_key}"})
    assert r.status_code == 401


CEILING = """
[guard]
defaults = false

[[guard.rules]]
name = "cap"
kind = "ceiling"
threshold = 100
mode = "suspend"
"""


@pytest.fixture
def capped(database_url, gateways):
    clock = FakeClock()
    srv = gateways.start(CEILING, clock, store=database_url)
    srv.extra["clock"] = clock
    yield srv
    gateways.stop_all()  # before the test's PostgreSQL database is dropped


def chat(srv, key: str, text: str = "hello there, how are you today?") -> httpx.Response:
    return httpx.post(
        srv.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "demo-echo", "messages": [{"role": "user", "content": text}]},
        timeout=10,
    )


def drain(srv) -> None:
    srv.call(srv.app.runtime.features.guard.drain())


def test_ceiling_end_to_end_events_and_audit(capped):
    srv = capped
    key = srv.api_key
    used = 0
    n = 0
    while True:
        r = chat(srv, key)
        assert r.status_code == 200, r.text
        used += r.json()["usage"]["total_tokens"]
        n += 1
        drain(srv)
        if used > 100:
            break
        srv.extra["clock"].advance(60)
    # The request that crossed the ceiling was answered; the next one is refused, naming the rule.
    r = chat(srv, key)
    assert r.status_code == 401
    msg = r.json()["error"]["message"]
    assert "disabled by the keyplane kill switch: rule cap (tokens " in msg and "over the ceiling of 100 per 1h" in msg

    admin = {"Authorization": f"Bearer {srv.admin_key}"}
    ev = httpx.get(srv.v1 + "/organization/guard/events", headers=admin).json()
    assert ev["object"] == "list" and len(ev["data"]) == 1 and ev["has_more"] is False
    e = ev["data"][0]
    assert e == {
        **e,
        "object": "guard.event",
        "rule": "cap",
        "kind": "ceiling",
        "key_id": srv.init["api_key_id"],
        "project_id": srv.project_id,
        "mode": "suspend",
        "action": "suspended",
        "dry_run": False,
        "resolved_at": None,
    }
    assert e["figures"]["current"] == used
    assert ev["first_id"] == ev["last_id"] == e["id"]
    assert (
        httpx.get(srv.v1 + "/organization/guard/events", headers=admin, params={"after": e["id"]}).json()["data"] == []
    )
    assert (
        httpx.get(srv.v1 + "/organization/guard/events", headers=admin, params={"key_id": "key_other"}).json()["data"]
        == []
    )

    logs = httpx.get(
        srv.v1 + "/organization/audit_logs",
        headers=admin,
        params={"event_types[]": ["guard.fired", "api_key.suspended"]},
    ).json()["data"]
    assert [entry["type"] for entry in logs] == ["api_key.suspended", "guard.fired"]
    for entry in logs:
        assert entry["actor"] == {
            "type": "guard_rule",
            "guard_rule": {"name": "cap", "kind": "ceiling", "event_id": e["id"]},
        }
    assert logs[1]["guard.fired"]["figures"]["ceiling"] == 100

    # Resume (admin API): the key works again, and the incident is resolved.
    sa = srv.init["api_key_id"]
    r = httpx.post(srv.v1 + f"/organization/projects/{srv.project_id}/api_keys/{sa}/resume", headers=admin)
    assert r.status_code == 200
    srv.extra["clock"].advance(3600)
    assert chat(srv, key).status_code == 200
    guard = srv.app.runtime.features.guard
    srv.call(guard.on_revision())
    e2 = httpx.get(srv.v1 + "/organization/guard/events", headers=admin).json()["data"][0]
    assert e2["resolved_at"] is not None


PROBE = """
[guard]
defaults = false

[[guard.rules]]
name = "probe"
kind = "error_spike"
window = "10m"
threshold = 0.5
min_volume = 12
mode = "revoke"
"""


def test_probing_with_a_stolen_key_trips_error_spike(gateways):
    srv = gateways.start(PROBE, FakeClock())
    key, admin = srv.api_key, {"Authorization": f"Bearer {srv.admin_key}"}
    r = httpx.post(
        srv.v1 + f"/organization/projects/{srv.project_id}/api_keys",
        headers=admin,
        json={"name": "narrow", "permissions": ["api.model.read"]},
    )
    narrow = r.json()["value"]
    statuses = []
    for i in range(6):
        statuses.append(chat(srv, key).status_code)
        # the thief tries the endpoints and models the key may not use
        r = httpx.post(
            srv.v1 + "/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": f"secret-model-{i}", "messages": []},
        )
        statuses.append(r.status_code)
        statuses.append(httpx.get(srv.v1 + "/files", headers={"Authorization": f"Bearer {narrow}"}).status_code)
    drain(srv)
    assert 404 in statuses and 403 in statuses
    r = chat(srv, key)
    assert r.status_code == 401 and "rule probe (" in r.json()["error"]["message"]


def test_config_errors_name_the_field(tmp_path):
    bad = {
        '[[guard.rules]]\nname = "a"\nkind = "ceiling"\nthreshold = 1\nwindow = "1x"\n': "$.guard.rules[0].window",
        '[[guard.rules]]\nname = "a"\nkind = "nope"\nthreshold = 1\n': "$.guard.rules[0].kind",
        '[[guard.rules]]\nname = "a"\nkind = "ceiling"\nthreshold = 1\n[[guard.rules]]\nname = "a"\n'
        'kind = "ceiling"\nthreshold = 2\n': "$.guard.rules[1].name",
        '[[alerts.sinks]]\ntype = "webhook"\nurl = "ftp://x"\n': "$.alerts.sinks[0].url",
        '[[alerts.sinks]]\ntype = "pagerduty"\n': "$.alerts.sinks[0].routing_key_env",
        '[[alerts.sinks]]\ntype = "email"\nsmtp_host = "h"\nemail_from = "a@b"\n': "$.alerts.sinks[0].email_to",
        '[[alerts.sinks]]\ntype = "webhook"\nurl = "http://x"\nsecret_env = "sk-abc123"\n': (
            "$.alerts.sinks[0].secret_env"
        ),
    }
    for i, (text, where) in enumerate(bad.items()):
        with pytest.raises(ConfigError) as e:
            make_settings(tmp_path / f"h{i}", "", config_text=text)
        assert where in str(e.value), (where, str(e.value))


def test_cli_rules_events_and_test_alert(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from keyplane.guard import cli as guard
    from tests.guard.support import Receiver

    app = typer.Typer()  # only the guard commands: the test does not depend on other modules' commands
    g = typer.Typer()
    app.add_typer(g, name="guard")
    g.command("rules")(guard.rules_)
    g.command("events")(guard.events)
    g.command("test-alert")(guard.test_alert)
    run = CliRunner().invoke
    hook = Receiver().start()
    try:
        home = tmp_path / "home"
        config = CEILING + f'\n[[alerts.sinks]]\ntype = "webhook"\nurl = "{hook.url}/h"\nsecret_env = "HOOK_S"\n'
        settings = make_settings(home, "", config_text=config)
        init_org(settings)
        monkeypatch.setenv("KEYPLANE_HOME", str(home))
        monkeypatch.setenv("HOOK_S", "abc")
        out = run(app, ["guard", "rules", "--json"])
        assert out.exit_code == 0, out.output
        rules = json.loads(out.stdout)
        assert [r["name"] for r in rules] == ["cap"] and rules[0]["source"] == "config"
        out = run(app, ["guard", "rules"])
        assert out.exit_code == 0 and "Kill switch rules" in out.stdout
        out = run(app, ["guard", "events", "--json"])
        assert json.loads(out.stdout) == []
        out = run(app, ["guard", "test-alert", "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout) == [{"sink": "webhook", "type": "webhook", "result": "delivered", "error": None}]
        (got,) = hook.wait_for(1)
        assert got.json()["event"] == "guard.test"
        hook.fail_next, hook.fail_status = 5, 500
        out = run(app, ["guard", "test-alert"])
        assert out.exit_code == 1 and "failed" in out.stdout
        monkeypatch.setenv("HOOK_S", "")
        out = run(app, ["guard", "test-alert"])
        assert out.exit_code == 1 and "HOOK_S is not set" in out.output
    finally:
        hook.stop()
