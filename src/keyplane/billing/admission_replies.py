"""What admission adds to a request's answer: the error a refused request gets (with the x-ratelimit-*
headers of the limit it hit), and the x-ratelimit-* headers of the tightest per-minute limits of an admitted one.
"""

from __future__ import annotations

from typing import Any

from keyplane import errors
from keyplane.billing.engine import Billing, Plan
from keyplane.limits import MINUTE_US, RPM, TPM, UNITS, Denied, Granted, gcra


def refusal(b: Billing, ctx: Any, plan: Plan, d: Denied, want: int, cost: int, now: float) -> errors.APIError:
    """The error of a request a budget or a bucket refused (``d``)."""
    model = ctx.model or ctx.endpoint
    if d.kind == "budget":
        scope, sid = plan.scopes[d.index]
        if scope == "credit":
            return errors.credit_used_up(b.credit_cap - d.spent, b.credit_cap, cost)
        limit = plan.budgets[d.index].limit or 0
        if scope == "project":
            p = b.rt.snapshot.projects.get(sid)
            what = f"project `{p.name}` ({sid})" if p else f"project {sid}"
        elif scope == "api_key":
            what = f"API key `{ctx.key.name}` ({sid})"
        else:
            what = f"organization {sid}"
        return errors.spend_limit_reached(scope, what, limit, d.spent + d.reserved, cost, now, b.period_end)
    where = plan.wheres[d.index]
    bk = plan.buckets[d.index]
    unit = UNITS[d.limit_index]
    limit = bk.limits[d.limit_index]
    if d.kind == "too_large":
        return errors.request_too_large(model, where, unit, limit, d.used)
    wait = d.wait_us / 1_000_000
    requested = 1 if d.limit_index in (0, 2) else want
    err = errors.rate_limited(model, where, unit, limit, d.used, requested, gcra.go_duration(wait), wait)
    kind = "requests" if d.limit_index in (0, 2) else "tokens"
    if d.limit_index in (0, 1):
        ctx.extra_headers.extend(
            [
                (f"x-ratelimit-limit-{kind}".encode(), b"%d" % limit),
                (f"x-ratelimit-remaining-{kind}".encode(), b"0"),
                (f"x-ratelimit-reset-{kind}".encode(), gcra.go_duration(wait).encode()),
            ]
        )
    return err


def headers(plan: Plan, g: Granted) -> list[tuple[bytes, bytes]]:
    """x-ratelimit-* of the tightest per-minute limits (reference/openai-surface.md)."""
    now = g.now_us
    out: list[tuple[bytes, bytes]] = []
    for idx, names in ((RPM, _REQUEST_HEADERS), (TPM, _TOKEN_HEADERS)):
        best_rem = best_lim = best_reset = -1
        for bk, tats in zip(plan.buckets, g.tats, strict=True):
            lim = bk.limits[idx]
            if lim <= 0:
                continue
            held = tats[idx] - now
            if held < 0:
                held = 0
            rem = (MINUTE_US - held) * lim // MINUTE_US
            if best_rem < 0 or rem < best_rem:
                best_rem, best_lim, best_reset = max(rem, 0), lim, held
        if best_lim > 0:
            out.append((names[0], b"%d" % best_lim))
            out.append((names[1], b"%d" % best_rem))
            out.append((names[2], gcra.go_duration(best_reset / 1_000_000).encode()))
    return out


_REQUEST_HEADERS = (b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests")
_TOKEN_HEADERS = (b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens")
