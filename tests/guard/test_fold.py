"""The kill switch's windows fold the requests listed by the settle step (MemoryWindows.observe, fold) into exactly
the series, origins and dirty entities that one record() per request and series made (the loop kept here as the
reference): random requests over keys, projects, windows, errors and bucket edges, folded at random moments."""

from __future__ import annotations

import random

import pytest

from keyplane.guard import windows as windows_mod
from keyplane.guard.engine import UPSTREAM_NOT_PROBING
from keyplane.guard.windows import MemoryWindows, Observation

PLANS = [
    (("key", 300.0),),
    (("key", 300.0), ("key", 3600.0)),
    (("key", 60.0), ("project", 600.0)),
    (("project", 90.0),),
]


def reference(w: MemoryWindows, obs: Observation, plan: tuple[tuple[str, float], ...], dirty: set[str]) -> None:
    """Guard.observe as it recorded each request before the fold."""
    kid, pid, now, tokens, cost, err, ip, ua = obs
    sample = {"r": 1}
    if tokens:
        sample["t"] = tokens
    if cost:
        sample["c"] = cost
    if err:
        sample[f"e{err}"] = 1
    kent = "k:" + kid
    pent = "p:" + pid if pid else None
    for scope, window in plan:
        if scope == "key":
            w.record(kent, window, now, sample)
        elif pent is not None:
            w.record(pent, window, now, sample)
    if w.track_origins:
        if ip:
            w.record_origin(kent, "i:" + ip, now)
        if ua:
            w.record_origin(kent, "u:" + ua[:200], now)
    dirty.add(kent)
    if pent is not None and any(scope == "project" for scope, _ in plan):
        dirty.add(pent)


def _state(w: MemoryWindows) -> tuple[object, ...]:
    series = {
        k: (s.first_seen, s.buckets, s.periods, {f: v for f, v in s.total.items() if v}) for k, s in w._series.items()
    }
    return series, w._origins, w._origins_first


@pytest.mark.parametrize("seed", range(6))
def test_fold_is_one_record_per_request(seed: int) -> None:
    rng = random.Random(seed)
    plan = PLANS[seed % len(PLANS)]
    a, b = MemoryWindows(), MemoryWindows()
    for w in (a, b):
        w.plan, w.track_origins = plan, seed % 2 == 0
        w.retention = {window: 3 for _, window in plan}
    dirty_a: set[str] = set()
    dirty_b: set[str] = set()
    now = 1_765_000_000.0 + rng.random()
    for _ in range(3000):
        now += rng.choice([0.0, 0.001, 0.4, 0.5, 1.0, 5.0, 61.0, 900.0])
        status = rng.choice([200, 200, 200, 400, 401, 403, 404, 429, 500])
        upstream = rng.choice([None, "openai"])
        err = status if 400 <= status < 500 and not (status in UPSTREAM_NOT_PROBING and upstream) else 0
        obs: Observation = (
            rng.choice(["k1", "k2", "k3"]),
            rng.choice(["p1", "p2", None]),
            now,
            rng.choice([0, 0, 7, 1200]),
            rng.choice([0, 3, 90_000]),
            err,
            rng.choice([None, "10.0.0.1", "10.0.0.2"]),
            rng.choice([None, "sdk/1", "x" * 300]),
        )
        reference(a, obs, plan, dirty_a)
        b.observe(obs)
        if rng.random() < 0.02:  # the evaluator's pass, a view or the sweep: whatever reads the windows folds first
            b.fold()
            dirty_b |= b.take_touched()
            assert _state(a) == _state(b)
    dirty_b |= b.take_touched()
    assert b.pending == []
    assert _state(a) == _state(b)
    assert dirty_a == dirty_b


async def test_reads_see_what_was_observed() -> None:
    w = MemoryWindows()
    w.plan, w.track_origins = (("key", 300.0),), True
    w.observe(("k1", "p1", 1000.0, 50, 0, 0, "10.0.0.1", None))
    assert (await w.view("k:k1", 300.0, 1000.0)).current == {"r": 1, "t": 50}  # folded by the read
    w.observe(("k1", "p1", 1001.0, 0, 0, 429, "10.0.0.9", None))
    assert await w.new_origins("k:k1", 1000.5) == (1, 0, 1000.0)
    assert w.take_touched() == {"k:k1"} and w.take_touched() == set()


def test_observe_says_when_to_wake_and_bounds_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(windows_mod, "MAX_PENDING", 5)
    w = MemoryWindows()
    w.plan = (("key", 300.0),)
    wakes = [w.observe(("k1", None, 1000.0 + i, 1, 0, 0, None, None)) for i in range(12)]
    assert wakes == [True, False, False, False, False, True, False, False, False, False, True, False]
    assert len(w.pending) == 2  # folded on the request path at 5: the list never holds more
    w.fold()
    assert w._series[("k:k1", 300.0)].total == {"r": 12, "t": 12}
