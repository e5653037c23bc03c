"""The kill switch on provider keys: a week of hourly buckets with a daily rhythm raises nothing; a leak hour at
+400% revokes the key at the provider within one poll."""

from __future__ import annotations

import asyncio
import json
import math

from sqlalchemy import select

from keyplane.alerts import Dispatcher
from keyplane.billing.prices import PriceTable
from keyplane.config import GuardRule, ProviderSection
from keyplane.guard.rules import compile_rule
from keyplane.providers.connector import Connector
from keyplane.providers.ingest import estimated_cost
from keyplane.providers.models import ProviderEvent, ProviderObject, ProviderUsage
from keyplane.providers.rules import find
from keyplane.providers.service import prices_for, sync_provider
from keyplane.store import db
from keyplane.store.models import AuditLog
from keyplane.testing.fake_org import Bucket
from tests.support import make_settings

DAY, HOUR = 86400, 3600
START = 1_800_000_000 // DAY * DAY  # a midnight


def normal(t: int) -> int:
    """Tokens of a normal hour: quiet nights (~1k), busy afternoons (~10k), a little day-to-day wobble."""
    h = (t % DAY) // HOUR
    shape = max(0.0, math.sin((h - 6) / 16 * math.pi)) if 6 <= h <= 22 else 0.0
    return int((1000 + 9000 * shape) * (1 + 0.08 * math.sin(t / 7919)))


def rule(**kw) -> GuardRule:
    base = {
        "name": "provider-surge",
        "kind": "token_surge",
        "scope": "provider_key",
        "threshold": 3.0,
        "window": "1h",
        "min_volume": 2000,
        "mode": "revoke",
        "cooldown": "6h",
    }
    base.update(kw)
    return GuardRule(**base)


def series(hours: int, leak_at: int | None = None) -> dict[tuple[str, str], dict[int, dict[str, int]]]:
    out: dict[int, dict[str, int]] = {}
    for i in range(hours):
        t = START + i * HOUR
        tokens = normal(t) * (5 if t == leak_at else 1)
        out[t] = {"t": tokens, "r": tokens // 500, "c": 0}
    return {("proj_data", "key_data1"): out}


def test_a_normal_week_raises_nothing_hour_by_hour():
    rules = [compile_rule(rule())]
    week = series(7 * 24)
    for i in range(7 * 24):
        now = START + i * HOUR + 1800
        visible = {k: {t: c for t, c in h.items() if t <= now} for k, h in week.items()}
        assert find(rules, visible, now) == [], f"false alarm at hour {i}"


def test_the_leak_hour_is_found_and_only_it():
    rules = [compile_rule(rule())]
    leak = START + 6 * DAY + 14 * HOUR  # a busy afternoon: +400% over the day's peak
    week = series(6 * DAY // HOUR + 15, leak_at=leak)
    firings = find(rules, week, leak + HOUR + 60)
    assert len(firings) == 1
    f = firings[0]
    assert f.key_ids == ["key_data1"] and f.finding.figures["ratio"] >= 4.0
    assert find(rules, series(6 * DAY // HOUR + 15), leak + HOUR + 60) == []


def test_night_leak_of_a_quiet_key_needs_a_ceiling_not_a_surge():
    """Documented limit: the surge baseline is at least half the busiest hour of the day before."""
    leak = START + 6 * DAY + 3 * HOUR
    week = series(6 * DAY // HOUR + 4, leak_at=leak)
    assert find([compile_rule(rule())], week, leak + HOUR + 60) == []
    ceiling = compile_rule(rule(name="hourly-ceiling", kind="ceiling", threshold=4000, min_volume=0))
    assert len(find([ceiling], week, leak + HOUR + 60)) == 1


class RecordingSink:
    type, name, events = "webhook", "test", ["guard.*"]

    def __init__(self) -> None:
        self.alerts: list = []

    async def send(self, alert, http) -> None:
        self.alerts.append(alert)


def _replay(
    fake_provider,
    tmp_path,
    leak: bool,
    dry_run: bool = False,
    sink: RecordingSink | None = None,
    *,
    swap: bool = False,
    prices: PriceTable | None = None,
    extra: tuple[GuardRule, ...] = (),
    **kw,
):
    """A week of hourly usage on key_data1 replayed through the fake provider. The leak hour is five times the
    tokens, or (``swap``) the same tokens on a model 16x dearer (gpt-4o-mini the week, gpt-4o that hour)."""
    fake = fake_provider.fake
    url = make_settings(tmp_path / "home").database_url
    leak_at = START + 6 * DAY + 14 * HOUR
    last = leak_at if leak else leak_at + 2 * HOUR
    for i in range((last - START) // HOUR + 1):
        t = START + i * HOUR
        hit = leak and t == leak_at
        tokens = normal(t) * (5 if hit and not swap else 1)
        model = ("gpt-4o" if hit else "gpt-4o-mini") if swap else "gpt-4o"
        fake.usage.append(Bucket(t, "proj_data", "key_data1", model, tokens // 2, tokens - tokens // 2, 10))
    cfg = ProviderSection(name="acme", base_url=fake_provider.base_url, admin_key_env="K", backfill_days=7)
    rules = [compile_rule(rule(dry_run=dry_run, **kw)), *(compile_rule(r) for r in extra)]

    async def go():
        engine = db.make_engine(url)
        await db.migrate(engine)
        sessions = db.sessionmaker(engine)
        conn = Connector(cfg, {"K": fake.admin_key})
        dispatcher = Dispatcher([sink]) if sink is not None else None
        results = []
        try:
            # First start: backfills the week up to the hour before the last; then one poll per hour.
            for now in (last - HOUR + 600, last + 600, last + HOUR + 60):
                results.append(await sync_provider(sessions, conn, now, rules, dispatcher, prices))
            if dispatcher is not None:
                await dispatcher.aclose()
            async with sessions() as s:
                events = list((await s.execute(select(ProviderEvent))).scalars())
                audit = list(
                    (await s.execute(select(AuditLog).where(AuditLog.type == "provider.guard.fired"))).scalars()
                )
                row = (await s.execute(select(ProviderObject).where(ProviderObject.object_id == "key_data1"))).scalar()
            return results, events, audit, row
        finally:
            await conn.close()
            await engine.dispose()

    return asyncio.run(go())


def test_replay_over_http_revokes_the_leaked_key_at_the_provider(fake_provider, tmp_path):
    sink = RecordingSink()
    results, events, audit, row = _replay(fake_provider, tmp_path, leak=True, sink=sink)
    [alert] = sink.alerts
    assert alert.event == "guard.provider.fired" and alert.severity == "critical"
    assert "provider rule provider-surge revoked acme key_data1" in alert.summary
    assert alert.details["figures"]["ratio"] >= 4.0
    assert "key_data1" not in fake_provider.fake.key_ids()  # deleted through the Admin API
    assert ("DELETE", "/v1/organization/projects/proj_data/api_keys/key_data1", "") in fake_provider.fake.requests
    assert [e.action for e in events] == ["revoked"] and row.removed_at is not None
    figures = json.loads(events[0].figures)
    assert figures["ratio"] >= 4.0 and figures["revoked"] == ["key_data1"]
    assert len(audit) == 1 and json.loads(audit[0].details)["action"] == "revoked"
    assert results[0]["events"] == []  # the poll before the leak was reported: nothing


def test_replay_without_the_leak_raises_nothing(fake_provider, tmp_path):
    _, events, audit, row = _replay(fake_provider, tmp_path, leak=False)
    assert events == [] and audit == [] and row.removed_at is None
    assert "key_data1" in fake_provider.fake.key_ids()


def test_dry_run_only_records(fake_provider, tmp_path):
    _, events, audit, _ = _replay(fake_provider, tmp_path, leak=True, dry_run=True)
    assert json.loads(audit[0].details)["action"] == "none"
    assert [e.action for e in events] == ["none"] and events[0].dry_run
    assert "key_data1" in fake_provider.fake.key_ids()
    assert not any(m == "DELETE" for m, _, _ in fake_provider.fake.requests)


def test_alert_mode_pages_and_deletes_nothing(fake_provider, tmp_path):
    _, events, audit, row = _replay(fake_provider, tmp_path, leak=True, mode="alert")
    assert [e.action for e in events] == ["alerted"] and row.removed_at is None
    assert json.loads(audit[0].details)["action"] == "alerted"
    assert not any(m == "DELETE" for m, _, _ in fake_provider.fake.requests)


def test_project_scope_revokes_every_key_of_the_project(fake_provider, tmp_path):
    _, events, _, _ = _replay(fake_provider, tmp_path, leak=True, scope="provider_project")
    assert [(e.scope, e.project_id, e.action) for e in events] == [("provider_project", "proj_data", "revoked")]
    assert fake_provider.fake.api_keys["proj_data"] == []  # key_data1, key_etl, key_old
    assert fake_provider.fake.api_keys["proj_default"]  # other projects untouched


# --- spend_surge per provider key: hourly costs estimated from the tokens per model at list prices ------------


def test_estimated_cost_of_an_hour_bucket():
    prices = PriceTable.from_config({})
    row = ProviderUsage(
        model="gpt-4o-2024-08-06", input_tokens=1_000_000, output_tokens=100_000, data='{"input_cached_tokens": 200000}'
    )
    assert estimated_cost(row, prices) == 3_250_000  # 800k x $2.50 + 200k x $1.25 + 100k x $10, per 1M
    assert estimated_cost(row, None) == 0
    assert (
        estimated_cost(ProviderUsage(model="no-such-model", input_tokens=10, output_tokens=10, data="{}"), prices) == 0
    )


def test_the_price_table_is_loaded_only_for_rules_counting_dollars(tmp_path):
    settings = make_settings(tmp_path / "home")
    assert prices_for(settings, [compile_rule(rule())]) is None
    table = prices_for(settings, [compile_rule(rule(name="s", kind="spend_surge"))])
    assert table is not None and table.lookup("gpt-4o") is not None


def test_a_model_swap_is_a_spend_surge_not_a_token_surge(fake_provider, tmp_path):
    """Same tokens, a dearer model: token_surge sees nothing, spend_surge on the key revokes it."""
    sink = RecordingSink()
    prices = PriceTable.from_config({})
    _, events, audit, row = _replay(
        fake_provider,
        tmp_path,
        leak=True,
        swap=True,
        sink=sink,
        prices=prices,
        name="provider-spend",
        kind="spend_surge",
        min_volume=0.01,
        extra=(rule(name="provider-tokens", dry_run=True),),
    )
    assert [(e.rule, e.scope, e.key_id, e.action) for e in events] == [
        ("provider-spend", "provider_key", "key_data1", "revoked")
    ]
    figures = json.loads(events[0].figures)
    assert figures["metric"] == "cost_usd" and figures["ratio"] >= 10 and figures["revoked"] == ["key_data1"]
    assert "key_data1" not in fake_provider.fake.key_ids() and row.removed_at is not None
    assert [a.event for a in sink.alerts] == ["guard.provider.fired"] and "cost_usd" in sink.alerts[0].summary
    assert len(audit) == 1


def test_a_normal_week_of_spend_raises_nothing(fake_provider, tmp_path):
    _, events, _, row = _replay(
        fake_provider,
        tmp_path,
        leak=False,
        swap=True,
        prices=PriceTable.from_config({}),
        name="provider-spend",
        kind="spend_surge",
        min_volume=0.01,
    )
    assert events == [] and row.removed_at is None


def test_spend_surge_without_a_price_table_sees_no_cost(fake_provider, tmp_path):
    _, events, _, _ = _replay(
        fake_provider,
        tmp_path,
        leak=True,
        swap=True,
        prices=None,
        name="provider-spend",
        kind="spend_surge",
        min_volume=0.01,
    )
    assert events == [] and "key_data1" in fake_provider.fake.key_ids()
