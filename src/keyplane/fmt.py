"""The one formatter for money and durations: error messages, the CLI and the dashboard all use it.

Money is held in micro-dollars (1 USD = 1_000_000). It is shown in whole cents ("$1,234.56"), or with
four decimals when it is more than nothing but less than one cent ("$0.0042"), and rounded in a stated
direction so two places never disagree by a rounding:

- ``"down"`` for what is *available* (credit left, room under a limit): never show more than there is;
- ``"up"`` for what is *spent* or *may be spent* (a refused request's cost): never show less;
- ``"nearest"`` (half up) for amounts that are exact in cents anyway (limits, grants) and totals.

Durations: :func:`duration` for countdowns ("resets in 4d7h12m0s": days, then Go's h/m/s, whole
seconds rounded up); :func:`go_duration` for rate-limit waits, in the exact form OpenAI's rate-limit
messages and x-ratelimit-reset-* headers use ("644ms", "1m26.4s", reference/openai-surface.md).
"""

from __future__ import annotations

import math
from typing import Literal

from keyplane.limits.gcra import go_duration

__all__ = ["CENT", "Rounding", "duration", "go_duration", "until", "usd", "usd_cents", "usd_dollars"]

Rounding = Literal["down", "up", "nearest"]

CENT = 10_000  # micro-dollars in one cent
_SUB = 100  # micro-dollars in 0.0001 USD, the step shown below one cent


def _round(micros: int, step: int, rounding: Rounding) -> int:
    if rounding == "down":
        return micros // step
    if rounding == "up":
        return -(-micros // step)
    return (micros + step // 2) // step


def usd(micros: int, rounding: Rounding = "nearest") -> str:
    """``micros`` micro-dollars as "$1,234.56" (or "$0.0042" below one cent), rounded as ``rounding`` says."""
    micros = int(micros)
    sign = "-" if micros < 0 else ""
    m = abs(micros)
    if sign and rounding != "nearest":  # rounding "down" a debt shows more of it: flip the direction
        rounding = "up" if rounding == "down" else "down"
    if 0 < m < CENT:
        n = _round(m, _SUB, rounding)
        if n < 100:
            return f"{sign}${n // 10_000}.{n:04d}" if n else "$0.00"
        m = n * _SUB  # rounded up to a whole cent
    c = _round(m, CENT, rounding)
    return f"{sign}${c // 100:,}.{c % 100:02d}"


def usd_dollars(value: float | int | str | None, rounding: Rounding = "nearest") -> str:
    """A dollar amount (float, as the Usage/Costs APIs answer) formatted like :func:`usd`; "-" if not a number."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    if math.isnan(v) or math.isinf(v):
        return "-"
    return usd(round(v * 1_000_000), rounding)


def usd_cents(cents: int, rounding: Rounding = "nearest") -> str:
    return usd(int(cents) * CENT, rounding)


def duration(seconds: float) -> str:
    """A countdown, whole seconds rounded up: "4d7h12m0s", "7h12m0s", "12m5s", "9s", "0s"."""
    s = max(0, math.ceil(round(seconds, 6)))
    d, s = divmod(s, 86_400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h}h{m}m{s}s"
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def until(now: float, end: float) -> str:
    """A reset time as a date and a countdown: "on 2026-12-01 00:00 UTC (in 4d7h12m0s)"."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"on {when} (in {duration(max(0.0, end - now))})"
