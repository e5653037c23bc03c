"""GCRA (generic cell rate algorithm): the arithmetic shared by both backends, and Go-style durations.

A limit of N per period T is a bucket of N that refills continuously at N/T: N requests (or tokens)
may go at once, then one every T/N. The state is one number per limit, the theoretical arrival time
(TAT): admitting ``units`` moves it to ``max(TAT, now) + units*T/N``, which is allowed while it stays
within ``now + T``. Times are integer microseconds so that the Lua script (doubles, "%d") computes
exactly what this module does.

The platform behaves the same way: its x-ratelimit-reset-* headers say how long until the bucket is
full again (reference/openai-surface.md).
"""

from __future__ import annotations

import math

from keyplane.limits import PERIODS_US


def increment(units: int, limit: int, period_us: int) -> int:
    """How far ``units`` move the TAT (rounded up to a microsecond: never in the client's favour)."""
    return -(-units * period_us // limit)


def try_take(tat: int, now: int, units: int, limit: int, period_us: int) -> tuple[bool, int]:
    """(allowed, new TAT if allowed else the wait in µs until it would be)."""
    base = tat if tat > now else now
    new = base + increment(units, limit, period_us)
    if new - now <= period_us:
        return True, new
    return False, new - period_us - now


def remaining(tat: int, now: int, limit: int, period_us: int) -> int:
    """Units that could still go at once."""
    held = tat - now if tat > now else 0
    return max(0, (period_us - held) * limit // period_us)


def reset_us(tat: int, now: int) -> int:
    """Time until the bucket is full again."""
    return tat - now if tat > now else 0


def used(tat: int, now: int, limit: int, period_us: int) -> int:
    return limit - remaining(tat, now, limit, period_us)


def correct(tat: int, now: int, delta_units: int, limit: int, period_us: int) -> int:
    """The TAT after charging ``delta_units`` more (or fewer, when negative) than admission did."""
    if delta_units >= 0:
        base = tat if tat > now else now
        return base + increment(delta_units, limit, period_us)
    new = tat - (-delta_units * period_us // limit)
    return new if new > now else now


def period_of(index: int) -> int:
    return PERIODS_US[index]


_durations: dict[int, str] = {}


def go_duration(seconds: float) -> str:
    """A duration as Go prints it (time.Duration.String), at millisecond precision: 20s, 644ms, 7m12s,
    1m26.4s, 6m0s, 1h0m0s. The platform's headers and messages use this form."""
    ms = math.ceil(round(seconds * 1000, 6))
    text = _durations.get(ms)
    if text is None:
        text = _format_ms(ms)
        if len(_durations) < 100_000:
            _durations[ms] = text
    return text


def _format_ms(ms: int) -> str:
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, frac = divmod(rest, 1000)
    sec = f"{s}.{frac:03d}".rstrip("0").rstrip(".") if frac else str(s)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"
