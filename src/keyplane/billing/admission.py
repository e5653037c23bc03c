"""Admission and settle: the two steps limits and billing add to every proxied request.

admit (hooks order 10): the request's tokens (prompt counted with the model's tokenizer + its
max_tokens, or the default_max_tokens setting) and its most expensive cost are checked and reserved
against every budget and bucket that applies, in one atomic step of the limiter; the
x-ratelimit-* headers are added to the response. settle (order 10): the actual cost from the usage
the proxy saw is committed, the rest released, the token buckets corrected, ``ctx.cost_micros``
filled for metering, and the cost queued for the SQL ledger.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from keyplane import errors
from keyplane.billing.engine import Billing, Plan
from keyplane.limits import MINUTE_US, RPM, TPM, UNITS, Denied, Granted, Reservation, Unseeded, gcra, tokens
from keyplane.limits.memory import MemoryLimiter

log = logging.getLogger("keyplane.billing")

STATE_KEY = "billing.reservation"
# Endpoints whose cost is counted in tokens; other paths with a model (images, audio) count requests only.
TOKEN_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})
NO_OUTPUT = frozenset({"/v1/embeddings"})
BIG_BODY = 64 * 1024  # bodies larger than this are tokenized in a thread, not on the event loop


def dollars(micros: int) -> str:
    return f"${micros / 1_000_000:,.2f}"


def _until(now: float, end: int) -> str:
    when = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"on {when} (in {gcra.go_duration(max(0.0, end - now))})"


class Admission:
    def __init__(self, billing: Billing) -> None:
        self.b = billing
        self.clock = billing.rt.clock
        lim = billing.limiter
        self._sync_admit = lim.admit_now if isinstance(lim, MemoryLimiter) else None

    async def admit(self, ctx: Any) -> None:
        model = ctx.model
        if model is None:
            return
        b = self.b
        now = self.clock.now()
        if now >= b.period_end:
            b.rollover(now)
        plan = b.plan(ctx.key, model)
        prompt = out = 0
        cost = 0
        if ctx.endpoint in TOKEN_ENDPOINTS:
            price = plan.price
            if price is None:
                raise errors.model_not_priced(model)
            body = ctx.body
            if len(body) > BIG_BODY:
                prompt, n = await asyncio.to_thread(tokens.measure, ctx.endpoint, model, body)
            else:
                prompt, n = tokens.measure(ctx.endpoint, model, body)
            if ctx.endpoint not in NO_OUTPUT:
                out = (ctx.max_tokens or b.default_max_tokens) * n
            cost = price.max_cost(prompt, out)
        want = prompt + out
        rid = ctx.request_id
        if self._sync_admit is not None:  # in-process: no await from check to reserve
            result = self._sync_admit(rid, plan.budgets, plan.buckets, cost, want)
        else:
            result = await self._fleet_admit(rid, plan, cost, want)
        if isinstance(result, Denied):
            raise self._refusal(ctx, plan, result, want, cost, now)
        if plan.buckets:
            ctx.extra_headers.extend(_headers(plan, result))
        ctx.state[STATE_KEY] = Reservation(rid, cost, want, plan.budgets, plan.buckets,
                                           {"plan": plan, "prompt": prompt})

    async def _fleet_admit(self, rid: str, plan: Plan, cost: int, want: int) -> Granted | Denied:
        lim = self.b.limiter
        try:
            try:
                return await lim.admit(rid, plan.budgets, plan.buckets, cost, want)
            except Unseeded:
                await self.b.seed(only_if_needed=True)
                return await lim.admit(rid, plan.budgets, plan.buckets, cost, want)
        except Unseeded:
            raise errors.limits_unavailable() from None
        except (OSError, ConnectionError, TimeoutError) as e:
            log.error("limits store unreachable: %s", e)
            raise errors.limits_unavailable() from None
        except Exception as e:
            if type(e).__module__.startswith("redis"):
                log.error("limits store error: %s: %s", type(e).__name__, e)
                raise errors.limits_unavailable() from None
            raise

    def _refusal(self, ctx: Any, plan: Plan, d: Denied, want: int, cost: int, now: float) -> errors.APIError:
        model = ctx.model
        if d.kind == "budget":
            scope, sid = plan.scopes[d.index]
            if scope == "credit":
                b = self.b
                return errors.insufficient_quota(
                    f"(keyplane: the organization's prepaid credit is used up: {dollars(b.credit_cap - d.spent)} "
                    f"available of {dollars(b.credit_cap)}, and this request may cost up to "
                    f"{dollars(cost)}. Ask your keyplane administrator for a credit grant.)")
            limit = plan.budgets[d.index].limit or 0
            if scope == "project":
                p = self.b.rt.snapshot.projects.get(sid)
                what = f"project `{p.name}` ({sid})" if p else f"project {sid}"
            elif scope == "api_key":
                what = f"API key `{ctx.key.name}` ({sid})"
            else:
                what = f"organization {sid}"
            return errors.spend_limit_exceeded(scope, what, dollars(limit), dollars(d.spent + d.reserved),
                                               _until(now, self.b.period_end))
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
            ctx.extra_headers.extend([
                (f"x-ratelimit-limit-{kind}".encode(), b"%d" % limit),
                (f"x-ratelimit-remaining-{kind}".encode(), b"0"),
                (f"x-ratelimit-reset-{kind}".encode(), gcra.go_duration(wait).encode()),
            ])
        return err

    async def settle(self, ctx: Any) -> None:
        res: Reservation | None = ctx.state.pop(STATE_KEY, None)
        if res is None:
            return
        plan: Plan = res.extra["plan"]  # type: ignore[assignment]
        price = plan.price
        prompt, cached, completion = ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens
        used = prompt + completion
        cost = 0
        if ctx.state.get("cache") == "hit":
            # Answered from keyplane's response cache: only the request counts (docs/caching.md).
            used = 0
        elif price is not None:
            if used:
                cost = price.cost(prompt, cached, completion)
                ctx.state["cost_input_micros"] = min(cost, price.cost(prompt, cached, 0))
            elif ctx.status and ctx.status < 400 and res.amount:
                # A success with no usage reported: bill the prompt as estimated at admission.
                used = int(res.extra["prompt"])  # type: ignore[call-overload]
                cost = price.cost(used, 0, 0)
                ctx.state["cost_input_micros"] = cost
        ctx.cost_micros = cost
        if cost:
            self.b.ledger.add(list(plan.keys), cost, self.clock.now())
        if not res.amount and not res.tokens and not cost:
            return
        try:
            await self.b.limiter.settle(res, cost, used)
        except Exception as e:  # the reservation expires on its own; the ledger has the cost
            log.error("settle of %s failed (%s: %s); its reservation will expire", res.rid, type(e).__name__, e)


def _headers(plan: Plan, g: Granted) -> list[tuple[bytes, bytes]]:
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
