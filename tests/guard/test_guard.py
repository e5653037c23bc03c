"""The kill switch on a real store (SQLite and PostgreSQL): settle -> detect -> act -> audit -> alert.

Requests are fed to the settle step as the proxy does (RequestContext), with a fake clock; alerts go
to a real local HTTP server.
"""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import select

from keyplane import alerts, control
from keyplane.clock import FakeClock
from keyplane.guard import engine
from keyplane.guard.models import GuardEvent
from keyplane.store.models import AuditLog
from tests.guard.support import Receiver, SMTPReceiver, ctx_for, guard_settings, make_runtime, new_key

HOUR = 3600.0

RULE = """
[[guard.rules]]
name = "{name}"
kind = "{kind}"
window = "{window}"
threshold = {threshold}
min_volume = {min_volume}
mode = "{mode}"
cooldown = "{cooldown}"
dry_run = {dry_run}
"""

HOOK = """
[[alerts.sinks]]
type = "webhook"
url = "{url}/hook"
secret_env = "HOOK_SECRET"
"""

BASE = """
[guard]
defaults = false

[alerts]
retry_backoff = 0.0
retry_backoff_max = 0.0
"""


def rule(
    name: str = "token-surge",
    kind: str = "token_surge",
    window: str = "1h",
    threshold: float = 3.0,
    min_volume: float = 20000,
    mode: str = "revoke",
    cooldown: str = "1h",
    dry_run: bool = False,
) -> str:
    return RULE.format(
        name=name,
        kind=kind,
        window=window,
        threshold=threshold,
        min_volume=min_volume,
        mode=mode,
        cooldown=cooldown,
        dry_run=str(dry_run).lower(),
    )


@pytest.fixture
def hook():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
async def make_guard(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    monkeypatch.setenv("PD_KEY", "pd-routing-key")
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    made = []

    async def make(config: str, clock: FakeClock | None = None):
        settings = guard_settings(tmp_path, database_url, BASE + config)
        clock = clock or FakeClock()
        rt, init = await make_runtime(settings, clock)
        guard = await engine.create(rt)
        rt.features.guard = guard
        await guard.start()
        made.append((rt, guard))
        return rt, guard, init, clock

    yield make
    for rt, guard in made:
        await guard.stop()
        await rt.engine.dispose()


async def baseline(guard, rt, clock, kid: str, hours: float = 26, per_hour: int = 10_000, every: float = 600) -> None:
    for _ in range(int(hours * HOUR / every)):
        guard.observe(ctx_for(rt, kid, tokens=int(per_hour * every / HOUR)))
        clock.advance(every)
    await guard.drain()


async def events(rt) -> list[GuardEvent]:
    async with rt.read() as s:
        return list((await s.execute(select(GuardEvent).order_by(GuardEvent.seq))).scalars())


async def audit_rows(rt, *types: str) -> list[AuditLog]:
    async with rt.read() as s:
        return list(
            (await s.execute(select(AuditLog).where(AuditLog.type.in_(types)).order_by(AuditLog.seq))).scalars()
        )


async def test_leak_is_revoked_with_one_signed_webhook(make_guard, hook):
    rt, guard, init, clock = await make_guard(rule() + HOOK.format(url=hook.url))
    kid = await new_key(rt, init["project_id"])
    await baseline(guard, rt, clock, kid)
    assert await events(rt) == []
    start = clock.now()
    while rt.snapshot.keys_by_id[kid].status(clock.now()) == "active":
        assert clock.now() - start < HOUR, "not revoked within the hour"
        guard.observe(ctx_for(rt, kid, tokens=1000))  # 4x the hourly tokens in 40 minutes
        clock.advance(60)
        await guard.drain()
    entry = rt.snapshot.keys_by_id[kid]
    assert entry.revoked_at is not None
    why = entry.inactive_reason(clock.now())
    assert "disabled by the keyplane kill switch: rule token-surge (tokens " in why and "x baseline)" in why

    (got,) = hook.wait_for(1)
    assert alerts.verify(b"s3cret", got.body, got.headers["keyplane-signature"])
    assert got.headers["keyplane-event"] == "guard.fired"
    body = got.json()
    assert body["event"] == "guard.fired" and body["action"] == "revoked"
    assert body["rule"]["name"] == "token-surge" and body["key"]["id"] == kid
    assert body["project"]["id"] == init["project_id"]
    assert body["figures"]["ratio"] >= 4.0 and body["figures"]["baseline"] > 0

    # More traffic from requests already in flight: no second firing, no second webhook.
    guard.observe(ctx_for(rt, kid, tokens=5000))
    await guard.drain()
    assert len(hook.received) == 1

    (ev,) = await events(rt)
    assert (ev.rule, ev.key_id, ev.action, ev.mode) == ("token-surge", kid, "revoked", "revoke")
    fired, deleted = await audit_rows(rt, "guard.fired", "api_key.deleted")
    for a in (fired, deleted):
        assert orjson.loads(a.actor) == {
            "type": "guard_rule",
            "guard_rule": {"name": "token-surge", "kind": "token_surge", "event_id": ev.id},
        }
        assert a.actor_id == "token-surge" and a.resource_id == kid
    assert orjson.loads(fired.details)["figures"]["ratio"] >= 4.0


async def test_probing_trips_error_spike(make_guard, hook):
    rt, guard, init, clock = await make_guard(
        rule("probe", "error_spike", "10m", 0.5, 20, "suspend") + HOOK.format(url=hook.url)
    )
    kid = await new_key(rt, init["project_id"])
    for i in range(10):
        guard.observe(ctx_for(rt, kid, tokens=50))
        clock.advance(5 + i)
    await guard.drain()
    assert await events(rt) == []
    for i in range(30):
        # keyplane's own refusals (no upstream) and the upstream's 404: all count
        status = (401, 403, 404)[i % 3]
        guard.observe(ctx_for(rt, kid, status=status, upstream=None if status != 404 else "demo"))
        clock.advance(2)
    await guard.drain()
    entry = rt.snapshot.keys_by_id[kid]
    assert entry.suspended_at is not None and entry.revoked_at is None
    assert "rule probe (" in entry.suspend_reason
    (ev,) = await events(rt)
    assert ev.action == "suspended" and orjson.loads(ev.figures)["errors"] >= 20
    assert [a.type for a in await audit_rows(rt, "guard.fired", "api_key.suspended")] == [
        "guard.fired",
        "api_key.suspended",
    ]


async def test_upstream_auth_errors_do_not_count(make_guard):
    """An upstream 401 means keyplane's provider key is wrong: no client key is to blame."""
    rt, guard, init, clock = await make_guard(rule("probe", "error_spike", "10m", 0.5, 20, "suspend"))
    kid = await new_key(rt, init["project_id"])
    for _ in range(50):
        guard.observe(ctx_for(rt, kid, status=401, upstream="openai"))
        clock.advance(1)
    await guard.drain()
    assert rt.snapshot.keys_by_id[kid].status(clock.now()) == "active"


@pytest.mark.parametrize("mode,dry_run", [("alert", False), ("revoke", True), ("suspend", True)])
async def test_dry_run_and_alert_mode_only_alert(make_guard, hook, mode, dry_run):
    rt, guard, init, clock = await make_guard(
        rule("cap", "ceiling", "1h", 100, 0, mode, "1h", dry_run) + HOOK.format(url=hook.url)
    )
    kid = await new_key(rt, init["project_id"])
    for _ in range(5):
        guard.observe(ctx_for(rt, kid, tokens=30))
        clock.advance(60)
        await guard.drain()
    assert rt.snapshot.keys_by_id[kid].status(clock.now()) == "active"
    (got,) = hook.wait_for(1)
    body = got.json()
    assert body["dry_run"] is dry_run
    assert body["action"] == ("alerted" if mode == "alert" and not dry_run else "none")
    if dry_run:
        assert body["summary"].startswith("[dry run]")
    (ev,) = await events(rt)
    assert ev.dry_run is dry_run


async def test_cooldown_prevents_repeats(make_guard, hook):
    rt, guard, init, clock = await make_guard(
        rule("cap", "ceiling", "1h", 100, 0, "alert", "2h") + HOOK.format(url=hook.url)
    )
    kid = await new_key(rt, init["project_id"])
    for _ in range(100):  # 100 minutes over the ceiling, within the cooldown
        guard.observe(ctx_for(rt, kid, tokens=50))
        clock.advance(60)
        await guard.drain()
    assert len(hook.wait_for(1)) == 1
    assert len(await events(rt)) == 1
    assert guard.counters["cooldown_suppressed"] > 50
    clock.advance(HOUR)  # past the cooldown: still over the ceiling, fires again
    for _ in range(3):
        guard.observe(ctx_for(rt, kid, tokens=50))
        await guard.drain()
    assert len(hook.wait_for(2)) == 2
    assert len(await events(rt)) == 2


async def test_ceiling_stops_the_key_on_the_request_that_crosses_it(make_guard):
    rt, guard, init, clock = await make_guard(rule("cap", "ceiling", "1h", 100, 0, "suspend"))
    kid = await new_key(rt, init["project_id"])
    for i in range(3):
        guard.observe(ctx_for(rt, kid, tokens=30))
        await guard.drain()
        assert rt.snapshot.keys_by_id[kid].status(clock.now()) == "active", i
        clock.advance(60)
    guard.observe(ctx_for(rt, kid, tokens=30))  # 120 > 100
    await guard.drain()
    entry = rt.snapshot.keys_by_id[kid]
    assert entry.status(clock.now()) == "suspended"
    assert entry.suspend_reason == (
        "disabled by the keyplane kill switch: rule cap (tokens 120 over the ceiling of 100 per 1h)"
    )


async def test_project_scope_stops_the_projects_keys(make_guard):
    rt, guard, init, clock = await make_guard(
        rule("proj-cap", "ceiling", "1h", 1000, 0, "suspend").replace(
            'kind = "ceiling"', 'kind = "ceiling"\nscope = "project"'
        )
    )
    pid = init["project_id"]
    a, b = await new_key(rt, pid, "a"), await new_key(rt, pid, "b")
    other = await _other_project_key(rt)
    for _ in range(6):
        guard.observe(ctx_for(rt, a, tokens=100))
        guard.observe(ctx_for(rt, b, tokens=100))
        guard.observe(ctx_for(rt, other, tokens=150))  # 900: under its own ceiling
        clock.advance(60)
    await guard.drain()
    now = clock.now()
    assert rt.snapshot.keys_by_id[a].status(now) == "suspended"
    assert rt.snapshot.keys_by_id[b].status(now) == "suspended"
    assert rt.snapshot.keys_by_id[other].status(now) == "active"
    assert {e.key_id for e in await events(rt)} >= {a, b}


async def _other_project_key(rt) -> str:
    async with rt.write() as s:
        p = await control.create_project(s, control.CLI_ACTOR, "other")
    return await new_key(rt, p.id)


async def test_pagerduty_trigger_and_resolve_on_resume(make_guard, hook):
    pd = f"""
[[alerts.sinks]]
type = "pagerduty"
url = "{hook.url}/pd"
routing_key_env = "PD_KEY"
"""
    rt, guard, init, _clock = await make_guard(rule("cap", "ceiling", "1h", 100, 0, "suspend") + pd)
    kid = await new_key(rt, init["project_id"])
    guard.observe(ctx_for(rt, kid, tokens=500))
    await guard.drain()
    (trigger,) = hook.wait_for(1)
    t = trigger.json()
    assert t["event_action"] == "trigger" and t["routing_key"] == "pd-routing-key"
    assert t["dedup_key"] == f"keyplane:cap:{kid}"
    assert t["payload"]["severity"] == "critical" and "cap" in t["payload"]["summary"]
    # An administrator resumes the key (CLI, admin API or another instance: all go through the store).
    async with rt.write() as s:
        await control.set_suspended(s, control.CLI_ACTOR, await control.get_key(s, kid), None)
    await guard.on_revision()
    await guard.alerts.drain()
    _, resolve = hook.wait_for(2)
    r = resolve.json()
    assert r == {"routing_key": "pd-routing-key", "event_action": "resolve", "dedup_key": f"keyplane:cap:{kid}"}
    (ev,) = await events(rt)
    assert ev.resolved_at is not None
    await guard.on_revision()  # resolved once only
    await guard.alerts.drain()
    assert len(hook.received) == 2


async def test_slack_and_email_sinks(make_guard, hook):
    smtp = SMTPReceiver().start()
    try:
        sinks = f"""
[[alerts.sinks]]
type = "slack"
url = "{hook.url}/slack"

[[alerts.sinks]]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
smtp_security = "none"
email_from = "keyplane@example.com"
email_to = ["oncall@example.com", "sec@example.com"]
"""
        rt, guard, init, _clock = await make_guard(rule("cap", "ceiling", "1h", 100, 0, "revoke") + sinks)
        kid = await new_key(rt, init["project_id"])
        guard.observe(ctx_for(rt, kid, tokens=500))
        await guard.drain()
        (slack,) = hook.wait_for(1)
        assert slack.path == "/slack"
        assert "kill switch rule cap revoked key app" in slack.json()["text"]
        ((sender, rcpts, data),) = smtp.messages
        assert sender == "keyplane@example.com" and rcpts == ["oncall@example.com", "sec@example.com"]
        assert b"Subject: [keyplane] kill switch rule cap revoked key app" in data
        assert guard.alerts.counters["email:delivered"] == 1 and guard.alerts.counters["slack:delivered"] == 1
    finally:
        smtp.stop()


async def test_alerts_retry_then_count_failures(hook):
    from keyplane.config import AlertSink

    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    sink = alerts.WebhookSink(AlertSink(type="webhook", url=hook.url + "/h"), b"k")
    d = alerts.Dispatcher([sink], max_attempts=4, backoff=1.0, backoff_max=3.0, sleep=sleep, rand=lambda: 0.0)
    hook.fail_next = 2
    d.send(alerts.Alert("guard.test", "hello"))
    await d.drain()
    assert len(hook.received) == 1
    assert slept == [1.0, 2.0]
    assert d.counters == {"webhook:retried": 2, "webhook:delivered": 1}
    hook.fail_next, hook.fail_status = 10, 503
    d.send(alerts.Alert("guard.test", "again"))
    await d.drain()
    assert d.counters["webhook:failed"] == 1 and slept[2:] == [1.0, 2.0, 3.0]
    hook.fail_next, hook.fail_status = 1, 400  # a 4xx is not retried
    d.send(alerts.Alert("guard.test", "bad"))
    await d.drain()
    assert d.counters["webhook:failed"] == 2 and len(slept) == 5
    await d.aclose()


async def test_sink_event_filter(hook):
    from keyplane.config import AlertSink

    sink = alerts.WebhookSink(AlertSink(type="webhook", url=hook.url + "/h", events=["spend.*"]), None)
    d = alerts.Dispatcher([sink])
    assert d.send(alerts.Alert("guard.fired", "x")) == 0
    assert d.send(alerts.Alert("spend.threshold", "y")) == 1
    await d.drain()
    (got,) = hook.received
    assert "keyplane-signature" not in got.headers
    await d.aclose()


async def test_rules_reload_from_the_store(make_guard):
    """A rule created over the API (by any instance) reaches this one through the revision."""
    from keyplane.guard import store

    rt, guard, init, clock = await make_guard("")
    assert guard.rules == {}
    async with rt.write() as s:
        await store.create_rule(
            s, control.CLI_ACTOR, guard.base_rules, {"name": "cap", "kind": "ceiling", "threshold": 10}, 0
        )
    await guard.on_revision()
    assert list(guard.rules) == ["cap"] and guard.rules["cap"].source == "api"
    kid = await new_key(rt, init["project_id"])
    guard.observe(ctx_for(rt, kid, tokens=50))
    await guard.drain()
    assert rt.snapshot.keys_by_id[kid].status(clock.now()) == "suspended"
