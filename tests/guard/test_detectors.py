"""Detectors over bucketed windows, driven by a fake clock: leaks caught, honest traffic left alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from keyplane.clock import FakeClock
from keyplane.config import GuardRule
from keyplane.guard import detectors
from keyplane.guard.rules import DEFAULT_RULES, compile_rule
from keyplane.guard.windows import MemoryWindows

HOUR = 3600.0
DAY = 86400.0

SURGE = compile_rule(
    GuardRule(name="token-surge", kind="token_surge", threshold=3.0, window="1h", min_volume=20000, mode="revoke")
)


class Feed:
    """Sends samples for one key into windows and evaluates one rule after each request."""

    def __init__(self, rule, windows: MemoryWindows | None = None, clock: FakeClock | None = None) -> None:
        self.rule = rule
        self.w = windows or MemoryWindows()
        self.w.retention = {rule.window_s: rule.spec.baseline_periods}
        self.clock = clock or FakeClock()
        self.findings: list[detectors.Finding] = []

    async def request(self, tokens: int = 0, status: int = 200, cost_micros: int = 0, entity: str = "k:key_1") -> None:
        sample = {"r": 1}
        if tokens:
            sample["t"] = tokens
        if cost_micros:
            sample["c"] = cost_micros
        if 400 <= status < 500:
            sample[f"e{status}"] = 1
        now = self.clock.now()
        self.w.record(entity, self.rule.window_s, now, sample)
        view = await self.w.view(entity, self.rule.window_s, now)
        f = detectors.evaluate(self.rule, view, entity)
        if f is not None:
            self.findings.append(f)

    async def steady(
        self, seconds: float, per_hour: float, every: float = 300.0, rate: Callable[[float], float] | None = None
    ) -> None:
        """Requests every ``every`` s for ``seconds``, ``per_hour`` tokens an hour (or rate(t) per hour)."""
        t0 = self.clock.now()
        end = t0 + seconds
        while self.clock.now() < end:
            r = rate(self.clock.now() - t0) if rate else per_hour
            await self.request(tokens=int(r * every / HOUR))
            self.clock.advance(every)


async def test_leak_of_4x_is_caught_within_the_hour():
    feed = Feed(SURGE)
    await feed.steady(30 * HOUR, per_hour=10_000)
    assert feed.findings == []
    # The leak: 4x the hourly tokens within 40 minutes.
    start = feed.clock.now()
    for _ in range(40):
        await feed.request(tokens=1000)
        feed.clock.advance(60)
        if feed.findings:
            break
    assert feed.findings, "the surge was not detected"
    assert feed.clock.now() - start < HOUR
    f = feed.findings[0]
    assert f.figures["ratio"] >= 4.0
    assert f.summary.startswith("tokens ") and f.summary.endswith("x baseline")


async def test_growth_of_20_percent_a_day_for_a_week_is_no_alarm():
    feed = Feed(SURGE)
    await feed.steady(7 * DAY, per_hour=0, rate=lambda t: 30_000 * 1.2 ** (t / DAY))
    assert feed.findings == []


async def test_daily_rhythm_is_no_alarm():
    """Busy days and quiet nights for a week: each morning is not a surge."""
    feed = Feed(SURGE)

    def rate(t: float) -> float:
        hour = (t % DAY) / HOUR
        return 40_000 if 8 <= hour < 18 else 500

    await feed.steady(7 * DAY, per_hour=0, rate=rate)
    assert feed.findings == []


async def test_tiny_key_jumping_10x_is_no_alarm():
    feed = Feed(SURGE)
    await feed.steady(30 * HOUR, per_hour=1000)
    await feed.steady(2 * HOUR, per_hour=10_000)
    assert feed.findings == []


async def test_new_key_first_hours_are_no_alarm():
    feed = Feed(SURGE)
    await feed.steady(HOUR, per_hour=1000)
    await feed.steady(2 * HOUR, per_hour=200_000, every=60)
    assert feed.findings == []


async def test_short_baseline_arms_sooner():
    rule = compile_rule(GuardRule(name="s", kind="token_surge", threshold=3.0, min_volume=1000, baseline_periods=3))
    feed = Feed(rule, clock=FakeClock(1_800_000_000 + 1800))
    await feed.steady(30 * 60, per_hour=5000)  # the first, partial hour does not count
    await feed.steady(2 * HOUR, per_hour=5000)
    await feed.steady(HOUR, per_hour=50_000)
    assert feed.findings == []  # two complete hours of history: not armed yet
    await feed.steady(3 * HOUR, per_hour=5000)
    await feed.steady(HOUR, per_hour=50_000, every=60)
    assert feed.findings


async def test_spend_surge_on_cost():
    rule = compile_rule(GuardRule(name="spend", kind="spend_surge", threshold=2.0, min_volume=1.0))
    assert rule.metric == "cost_usd"
    feed = Feed(rule)
    for _ in range(int(26 * HOUR / 300)):
        await feed.request(cost_micros=100_000)  # $1.20 an hour
        feed.clock.advance(300)
    assert feed.findings == []
    for _ in range(60):
        await feed.request(cost_micros=200_000)
        feed.clock.advance(60)
    assert feed.findings and feed.findings[0].figures["metric"] == "cost_usd"


async def test_error_spike_on_probing():
    rule = compile_rule(DEFAULT_RULES[1])
    feed = Feed(rule)
    for _ in range(100):  # honest traffic with a few 404s
        await feed.request(tokens=100, status=404 if feed.clock.now() % 7 == 0 else 200)
        feed.clock.advance(20)
    assert feed.findings == []
    for i in range(40):  # keyplane's own auth and permission refusals (#14.1: 404s are exploration)
        await feed.request(status=(401, 403)[i % 2])
        feed.clock.advance(1)
    assert feed.findings
    f = feed.findings[0]
    assert f.figures["share"] >= 0.5 and f.figures["errors"] >= 15
    assert "requests answered" in f.summary


async def test_error_spike_ignores_statuses_not_listed_and_small_counts():
    rule = compile_rule(DEFAULT_RULES[1])
    feed = Feed(rule)
    for _ in range(200):
        await feed.request(status=429)  # the default rule leaves rate-limited clients alone
        feed.clock.advance(1)
    for _ in range(10):
        await feed.request(status=401)  # under min_volume on its own
    assert feed.findings == []
    rule429 = compile_rule(GuardRule(name="e", kind="error_spike", threshold=0.5, min_volume=30, window="10m"))
    feed = Feed(rule429)
    for _ in range(40):
        await feed.request(status=429)
        feed.clock.advance(1)
    assert feed.findings


async def test_ceiling_fires_on_the_request_that_crosses_it():
    rule = compile_rule(GuardRule(name="cap", kind="ceiling", threshold=100, window="1h", mode="revoke"))
    feed = Feed(rule)
    for _ in range(3):
        await feed.request(tokens=30)
        feed.clock.advance(60)
    assert feed.findings == []  # 90 tokens
    await feed.request(tokens=30)
    assert len(feed.findings) == 1
    assert feed.findings[0].figures["current"] == 120
    assert "over the ceiling of 100 per 1h" in feed.findings[0].summary


async def test_ceiling_window_slides():
    rule = compile_rule(GuardRule(name="cap", kind="ceiling", threshold=100, window="1h"))
    feed = Feed(rule)
    for _ in range(20):
        await feed.request(tokens=60)
        feed.clock.advance(HOUR)
    assert feed.findings == []


async def test_new_origins():
    rule = compile_rule(GuardRule(name="origins", kind="new_origins", threshold=5, window="1h", min_volume=5))
    w = MemoryWindows()
    w.retention = {rule.window_s: 0}
    clock = FakeClock()
    ent = "k:key_1"

    async def req(ip: str, ua: str = "app/1.0") -> detectors.Finding | None:
        now = clock.now()
        w.record(ent, rule.window_s, now, {"r": 1})
        w.record_origin(ent, "i:" + ip, now)
        w.record_origin(ent, "u:" + ua, now)
        view = await w.view(ent, rule.window_s, now)
        ips, uas, first = await w.new_origins(ent, now - rule.window_s)
        return detectors.new_origins(rule, view, "key_1", ips, uas, first, now)

    # First hour: a new key's every origin is new, and that is no alarm.
    for i in range(10):
        assert await req(f"10.0.0.{i}") is None
        clock.advance(60)
    clock.advance(2 * HOUR)
    for _ in range(20):  # the usual origins again
        assert await req("10.0.0.1") is None
        clock.advance(60)
    found = None
    for i in range(10):
        found = found or await req(f"203.0.113.{i}", ua=f"curl/{i}")
        clock.advance(10)
    assert found is not None and found.figures["new_ips"] >= 5


@pytest.mark.parametrize("every", [60.0, 900.0])
async def test_memory_stays_bounded(every: float):
    feed = Feed(SURGE)
    await feed.steady(3 * DAY, per_hour=5000, every=every)
    (series,) = feed.w._series.values()
    assert len(series.buckets) <= 61
    assert len(series.periods) <= SURGE.spec.baseline_periods + 2
