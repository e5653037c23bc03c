"""GCRA arithmetic and Go-style durations (the platform's wording in headers and messages)."""

from __future__ import annotations

import pytest

from keyplane.limits import MINUTE_US, gcra


@pytest.mark.parametrize(
    "seconds,text",
    [
        (20, "20s"),
        (0.644, "644ms"),
        (432, "7m12s"),
        (86.4, "1m26.4s"),
        (360, "6m0s"),
        (0.012, "12ms"),
        (1, "1s"),
        (0, "0s"),
        (3600, "1h0m0s"),
        (3725.5, "1h2m5.5s"),
        (0.0001, "1ms"),
        (59.9996, "1m0s"),
    ],
)
def test_go_duration(seconds, text):
    assert gcra.go_duration(seconds) == text


def test_burst_then_steady_rate():
    limit, now, tat = 60, 10 * MINUTE_US, 0
    for _ in range(60):  # a full burst of 60 at one instant
        ok, tat = gcra.try_take(tat, now, 1, limit, MINUTE_US)
        assert ok
    ok, wait = gcra.try_take(tat, now, 1, limit, MINUTE_US)
    assert not ok and wait == 1_000_000  # one more in exactly T/N
    assert gcra.remaining(tat, now, limit, MINUTE_US) == 0
    assert gcra.reset_us(tat, now) == MINUTE_US
    later = now + 1_000_000
    assert gcra.remaining(tat, later, limit, MINUTE_US) == 1
    ok, _ = gcra.try_take(tat, later, 1, limit, MINUTE_US)
    assert ok


def test_tokens_and_correction():
    limit, now = 1000, 5 * MINUTE_US
    ok, tat = gcra.try_take(0, now, 600, limit, MINUTE_US)
    assert ok and gcra.remaining(tat, now, limit, MINUTE_US) == 400
    assert not gcra.try_take(tat, now, 401, limit, MINUTE_US)[0]
    tat = gcra.correct(tat, now, -500, limit, MINUTE_US)  # used 100, not 600
    assert gcra.remaining(tat, now, limit, MINUTE_US) == 900
    tat = gcra.correct(tat, now, -5000, limit, MINUTE_US)  # never below empty
    assert tat == now
    tat = gcra.correct(tat, now, 1200, limit, MINUTE_US)  # an underestimate pushes past the limit
    assert gcra.remaining(tat, now, limit, MINUTE_US) == 0
    assert gcra.used(tat, now, limit, MINUTE_US) == 1000
