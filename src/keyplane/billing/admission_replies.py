"""What admission adds to a request's answer: the error a refused request gets (with the x-ratelimit-*
headers of the limit it hit), and the x-ratelimit-* headers of the tightest per-minute limits of an admitted one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from keyplane import errors
from keyplane.billing.engine import Billing, Plan
from keyplane.limits import MINUTE_US, RPM, TPM, UNITS, Denied, Granted, gcra

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext


def refusal(
    b: Billing, ctx: RequestContext, plan: Plan, d: Denied, want: int, cost: int, now: float
) -> errors.APIError:
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
    buckets, tats = plan.buckets, g.tats
    if len(buckets) != len(tats):
        raise ValueError("a Granted's TATs do not match the plan's buckets")
    out: list[tuple[bytes, bytes]] = []
    if len(buckets) == 1:  # usually the project's bucket alone (a key with limits of its own adds one): no search
        limits, tat = buckets[0].limits, tats[0]
        for idx, names in _PER_MINUTE:
            lim = limits[idx]
            if lim > 0:
                held = tat[idx] - now
                if held < 0:
                    held = 0
                rem = (MINUTE_US - held) * lim // MINUTE_US
                out += ((names[0], b"%d" % lim), (names[1], b"%d" % (rem if rem > 0 else 0)), (names[2], _reset(held)))
        return out
    for idx, names in _PER_MINUTE:
        best_rem = best_lim = best_reset = -1
        for j, bk in enumerate(buckets):
            lim = bk.limits[idx]
            if lim <= 0:
                continue
            held = tats[j][idx] - now
            if held < 0:
                held = 0
            rem = (MINUTE_US - held) * lim // MINUTE_US
            if best_rem < 0 or rem < best_rem:
                best_rem, best_lim, best_reset = max(rem, 0), lim, held
        if best_lim > 0:
            out.append((names[0], b"%d" % best_lim))
            out.append((names[1], b"%d" % best_rem))
            out.append((names[2], _reset(best_reset)))
    return out


_resets: dict[int, bytes] = {}  # ms -> text
_resets_us: dict[int, bytes] = {}  # µs -> text: a bucket far from its limits shows the same few values


def _reset(held_us: int) -> bytes:
    """``gcra.go_duration(held_us / 1_000_000).encode()``, kept per µs (a few values) and per millisecond (as
    go_duration keeps its text): the float rounding is done once per value."""
    v = _resets_us.get(held_us)
    if v is not None:
        return v
    seconds = held_us / 1_000_000
    ms = math.ceil(round(seconds * 1000, 6))  # go_duration's own rounding: its text depends on ms alone
    v = _resets.get(ms)
    if v is None:
        v = gcra.go_duration(seconds).encode()
        if len(_resets) < 100_000:
            _resets[ms] = v
    if len(_resets_us) < 4096:
        _resets_us[held_us] = v
    return v


_REQUEST_HEADERS = (b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests")
_TOKEN_HEADERS = (b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens")
_PER_MINUTE = ((RPM, _REQUEST_HEADERS), (TPM, _TOKEN_HEADERS))
