"""The detectors: pure functions from a rule and a window view to a finding (or none).

- Surges (token_surge, spend_surge): the sliding window's amount against a baseline made of the
  preceding complete periods of the same length: their EWMA (alpha = 2 / (N + 1)), but never less
  than half the busiest of them, so a daily rhythm (quiet nights, busy days) is not a surge. No
  finding below ``min_volume``, before the whole baseline exists (``baseline_periods`` complete
  periods since the key's first use: a new key's first day has no rhythm to compare with), or with
  a zero baseline (a dormant key: the ceiling rule is the tool for those).
- error_spike: the share of the listed 4xx answers among the window's requests (at least
  ``min_volume`` requests): the signature of probing with a stolen key.
- new_origins: client IPs or user agents the key had not used before, first seen in the window; only
  for keys in use since before the window (a new key's every origin is new).
- ceiling: an absolute amount of ``metric`` per window; fires on the request that goes over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyplane.guard.rules import Rule, format_duration
from keyplane.guard.windows import Counters, View


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Rule
    scope: str  # key | project
    entity_id: str  # the key id or the project id
    figures: dict[str, Any]
    summary: str  # for the 401 message and the alert: "tokens 4.1x baseline"


def amount(c: Counters, metric: str) -> float:
    if metric == "tokens":
        return float(c.get("t", 0))
    if metric == "cost_usd":
        return c.get("c", 0) / 1_000_000
    return float(c.get("r", 0))


def _fmt(v: float, metric: str) -> str:
    if metric == "cost_usd":
        return f"${v:,.2f}" if v >= 1 else f"${v:.4f}"
    return f"{v:,.0f}"


def baseline(values: list[float], n: int) -> float:
    vals = values[-n:]
    if not vals:
        return 0.0
    a = 2.0 / (len(vals) + 1)
    e = vals[0]
    for v in vals[1:]:
        e = a * v + (1 - a) * e
    return max(e, max(vals) / 2)


def surge(rule: Rule, view: View, entity: str) -> Finding | None:
    m = rule.metric
    cur = amount(view.current, m)
    if cur <= 0 or cur < rule.min_volume:
        return None
    history = [amount(p, m) for p in view.periods]
    if len(history) < rule.spec.baseline_periods:
        return None
    base = baseline(history, rule.spec.baseline_periods)
    if base <= 0:
        return None
    ratio = cur / base
    if ratio < 1 + rule.threshold:
        return None
    w = format_duration(rule.window_s)
    figures = {
        "metric": m,
        "window": w,
        "current": round(cur, 6),
        "baseline": round(base, 6),
        "ratio": round(ratio, 2),
        "threshold": rule.threshold,
        "periods": len(history),
    }
    return Finding(rule, rule.scope, entity, figures, f"{m} {ratio:.1f}x baseline")


def error_spike(rule: Rule, view: View, entity: str) -> Finding | None:
    requests = view.current.get("r", 0)
    if requests <= 0 or requests < rule.min_volume:
        return None
    by_status = {s: view.current.get(f"e{s}", 0) for s in rule.spec.statuses}
    errors = sum(by_status.values())
    share = errors / requests
    if errors == 0 or share < rule.threshold:
        return None
    w = format_duration(rule.window_s)
    figures = {
        "metric": "requests",
        "window": w,
        "requests": requests,
        "errors": errors,
        "share": round(share, 4),
        "threshold": rule.threshold,
        "by_status": {str(s): n for s, n in by_status.items() if n},
    }
    codes = "/".join(str(s) for s, n in by_status.items() if n)
    return Finding(rule, rule.scope, entity, figures, f"{errors} of {requests} requests answered {codes} in {w}")


def ceiling(rule: Rule, view: View, entity: str) -> Finding | None:
    m = rule.metric
    cur = amount(view.current, m)
    if cur <= rule.threshold or cur < rule.min_volume:
        return None
    w = format_duration(rule.window_s)
    figures = {"metric": m, "window": w, "current": round(cur, 6), "ceiling": rule.threshold}
    return Finding(
        rule, rule.scope, entity, figures, f"{m} {_fmt(cur, m)} over the ceiling of {_fmt(rule.threshold, m)} per {w}"
    )


def new_origins(
    rule: Rule, view: View, entity: str, ips: int, uas: int, first_seen: float | None, now: float
) -> Finding | None:
    if first_seen is None or first_seen > now - rule.window_s:
        return None  # every origin of a key's first window is new
    requests = view.current.get("r", 0)
    if requests < rule.min_volume:
        return None
    worst = max(ips, uas)
    if worst < rule.threshold:
        return None
    w = format_duration(rule.window_s)
    figures = {
        "metric": "origins",
        "window": w,
        "new_ips": ips,
        "new_user_agents": uas,
        "requests": requests,
        "threshold": rule.threshold,
    }
    what = f"{ips} new client IPs" if ips >= uas else f"{uas} new user agents"
    return Finding(rule, rule.scope, entity, figures, f"{what} in {w}")


def evaluate(rule: Rule, view: View, entity: str) -> Finding | None:
    """Surges, error spikes and ceilings (new_origins needs the origin counts: see :func:`new_origins`)."""
    if rule.kind in ("token_surge", "spend_surge"):
        return surge(rule, view, entity)
    if rule.kind == "error_spike":
        return error_spike(rule, view, entity)
    if rule.kind == "ceiling":
        return ceiling(rule, view, entity)
    return None
