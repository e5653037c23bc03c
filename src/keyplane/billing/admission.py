"""Admission and settle: the two steps limits and billing add to every proxied request.

admit (keyplane.pipeline) runs for every call the provider bills (``ctx.spending``), with or without a
``model``: :mod:`keyplane.billing.quote` says what it may cost (tokens, images, characters, minutes,
or nothing keyplane can price), then that cost and its tokens are checked and reserved against every
budget and bucket that applies, in one atomic step of the limiter; the x-ratelimit-* headers are
added to the response. Where a spend limit or enforced credit applies (*money controls*), a call
that cannot be priced or bounded is refused, and every spending call needs room in the budget;
where none applies, an unpriced model is served and recorded at cost 0, with a warning the first
time. settle (order 10): the actual cost is committed, the rest released, the token buckets
corrected, ``ctx.cost_micros`` filled for metering, and the cost queued for the SQL ledger.

Service tiers: a token request is billed at the tier its answer says served it (``ctx.service_tier``), not
the one it asked for: one naming none (or `auto`) is served at the provider project's default tier, which
may be priority. Such a request is reserved at the dearest tier its upstreams are known to serve by default
(their ``service_tier`` setting, or a dearer tier an earlier answer reported: :meth:`Admission._learn`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Protocol

from keyplane import errors
from keyplane.billing import quote as quote_mod
from keyplane.billing.engine import Billing, Plan
from keyplane.billing.prices import MICROS, Price, Tokens
from keyplane.billing.quote import TierPricing
from keyplane.billing.ratelimits import limits_model
from keyplane.limits import MINUTE_US, RPM, TPM, UNITS, Denied, Granted, Reservation, Unseeded, gcra
from keyplane.limits.memory import MemoryLimiter

log = logging.getLogger("keyplane.billing")

BIG_BODY = 64 * 1024  # bodies larger than this are tokenized in a thread, not on the event loop


class _Upstream(Protocol):
    """What billing reads and teaches of an upstream a request may go to (keyplane.proxy.router.Deployment)."""

    @property
    def name(self) -> str: ...

    default_tier: str | None


def _form(ctx: Any) -> dict[str, str] | None:
    """The multipart text fields the proxy read (with the Content-Type's boundary), if it kept them."""
    form = getattr(ctx, "form", None)
    return form if isinstance(form, dict) else None


class Admission:
    def __init__(self, billing: Billing) -> None:
        self.b = billing
        self.clock = billing.rt.clock
        lim = billing.limiter
        self._sync_admit = lim.admit_now if isinstance(lim, MemoryLimiter) else None
        self._warned: set[str] = set()
        self._warn_unpriced_upstream_models()
        from keyplane.billing.batches import Batches

        self.batches = Batches(billing)  # batch files priced, batches reserved and metered (billing/batches.py)
        billing.rt.features.batches = self.batches

    def _warn_unpriced_upstream_models(self) -> None:
        """Start-up: name the models the upstreams serve by exact name that have no price."""
        for up in self.b.rt.settings.file.upstreams:
            for m in up.models:
                if not any(c in m for c in "*?[") and self.b.prices.lookup(m) is None:
                    self._warn_once(m, f"upstream `{up.name}`")

    def _warn_once(self, model: str, where: str) -> None:
        if model in self._warned or len(self._warned) >= 1000:
            return
        self._warned.add(model)
        log.warning(
            "model `%s` (%s) has no price: it is served and recorded at cost 0 where no spend limit or "
            "credit applies, and refused where one does. To price it, add to keyplane.toml under [prices]: "
            '"%s" = { input = 0, output = 0 }  (USD per 1M tokens)',
            model,
            where,
            model,
        )

    async def admit(self, ctx: Any) -> None:
        if not getattr(ctx, "spending", ctx.model is not None):
            return
        b = self.b
        now = self.clock.now()
        if now >= b.period_end:
            b.rollover(now)
        args = (
            b.prices,
            ctx.endpoint,
            ctx.model,
            ctx.body,
            ctx.max_tokens,
            bool(getattr(ctx, "context_ref", False)),
            _form(ctx),
            b.default_max_tokens,
            getattr(ctx, "upload", None),
            self._default_tier(ctx),
        )
        q = await asyncio.to_thread(quote_mod.quote, *args) if len(ctx.body) > BIG_BODY else quote_mod.quote(*args)
        model = q.model
        if model:
            plan = b.plan(ctx.key, limits_model(b, ctx.key.id, ctx.key.project_id or "", model))
        else:  # no model: the budgets only (there is no per-model bucket to count it in)
            plan = dataclasses.replace(b.plan(ctx.key, ""), buckets=(), wheres=())
        controlled = any(ref.limit is not None for ref in plan.budgets)
        cost = q.cost
        if q.unpriced is not None:
            if ctx.endpoint == "/v1/batches":  # priced from its input file, if keyplane read it
                await self._admit_batch(ctx, plan, controlled, now)
                return
            if controlled:
                raise q.unpriced
            self._warn_once(model or f"POST {ctx.endpoint}", "first request")
            cost = 0
        elif q.estimate is not None and controlled:
            raise errors.cost_not_bounded(ctx.endpoint, q.estimate)
        if controlled and cost < 1:
            cost = 1  # every spending call needs room: none passes an exhausted budget, free or not
        want = q.tokens
        rid = ctx.request_id
        if self._sync_admit is not None:  # in-process: no await from check to reserve
            result = self._sync_admit(rid, plan.budgets, plan.buckets, cost, want)
        else:
            result = await self._fleet_admit(rid, plan, cost, want)
        if isinstance(result, Denied):
            raise self._refusal(ctx, plan, result, want, cost, now)
        if q.body is not None:  # the output limit reserved, given to the upstream (the handler forwards ctx.body)
            ctx.body = q.body
            ctx.max_tokens = q.out_limit
        if plan.buckets:
            ctx.extra_headers.extend(_headers(plan, result))
        ctx.reservation = Reservation(
            rid,
            cost,
            want,
            plan.budgets,
            plan.buckets,
            {
                "plan": plan,
                "prompt": q.prompt,
                "price": q.price,
                "flat": q.cost if q.flat and q.unpriced is None else None,
                "units": q.units,
                "tools": q.tools,
                "per_minute": q.per_minute,
                "tier": q.tier,
            },
        )

    def _default_tier(self, ctx: Any) -> str | None:
        """The dearest tier the request's upstreams are known to serve a request naming none at, if dearer than
        the standard one (a tier the table does not price for the model wins: the quote is then an estimate).
        Usually no upstream has one: a few attribute reads."""
        pool: tuple[_Upstream, ...] = getattr(ctx, "pool", ())
        model: str | None = ctx.model
        best: str | None = None
        best_factor = MICROS
        for d in pool:
            tier = d.default_tier
            if tier is None or model is None:
                continue
            factor = self.b.prices.tier_factor(model, tier)
            if factor is None:
                return tier
            if factor > best_factor:
                best, best_factor = tier, factor
        return best

    async def _admit_batch(self, ctx: Any, plan: Plan, controlled: bool, now: float) -> None:
        """POST /v1/batches: reserve the input file's estimate at the batch price for the batch's life, or
        refuse it under money controls when keyplane did not read (or could not bound) the file."""
        from keyplane.billing.batch_input import Estimate
        from keyplane.billing.batches import RESERVE_SECONDS

        fid, est = await self.batches.input_estimate(ctx)
        self.batches.check_access(ctx, fid, est)  # scopes, model and hosted tool permissions of every request
        if est is not None:  # a fine-tuned model another project made runs in no line (proxy/owners.py)
            await self._own_models(ctx, sorted(est.facts.models))
        if est is None or est.cost is None:
            why = (
                est.why
                if est is not None and est.why
                else (
                    f"its input file `{(fid or '')[:64]}` was not uploaded through keyplane"
                    if fid
                    else "it names no input file"
                )
            )
            if controlled:
                raise errors.cost_not_bounded(
                    ctx.endpoint,
                    f"{why}; upload the input file through keyplane "
                    "(POST /v1/files with purpose=batch) so that its requests are priced",
                )
            self._warn_once(f"POST {ctx.endpoint}", "first request")
            # No money control: served with nothing reserved, but kept against the batch id once created
            # (batches.batch_created), so that its output is metered all the same.
            ctx.reservation = Reservation(
                ctx.request_id,
                0,
                0,
                plan.budgets,
                (),
                {"plan": plan, "batch": est if est is not None else Estimate(None, why[:500]), "input_file_id": fid},
            )
            return
        cost = max(est.cost, 1) if controlled else est.cost
        rid = ctx.request_id
        ttl_us = RESERVE_SECONDS * 1_000_000
        if self._sync_admit is not None:
            result = self._sync_admit(rid, plan.budgets, (), cost, 0, ttl_us)
        else:
            result = await self._fleet_admit(rid, plan, cost, 0, ttl_us)
        if isinstance(result, Denied):
            raise self._refusal(ctx, plan, result, 0, cost, now)
        ctx.reservation = Reservation(
            rid, cost, 0, plan.budgets, (), {"plan": plan, "batch": est, "input_file_id": fid}
        )

    async def _own_models(self, ctx: Any, models: list[str]) -> None:
        """404 ``model_not_found`` for the first fine-tuned model of ``models`` another project's job made."""
        tuned = [m for m in models if m.startswith("ft:")]
        proxy = self.b.rt.features.proxy
        if not tuned or proxy is None:
            return
        from keyplane.proxy.owners import fine_tuned_ids

        found = await proxy.tenancy.store.owners({i for m in tuned for i in fine_tuned_ids(m)})
        for m in tuned:
            if any(
                (o := found.get(i)) is not None and o.project_id != (ctx.project_id or "") for i in fine_tuned_ids(m)
            ):
                raise errors.model_not_found(m)

    async def _fleet_admit(
        self, rid: str, plan: Plan, cost: int, want: int, ttl_us: int | None = None
    ) -> Granted | Denied:
        lim = self.b.limiter
        buckets = plan.buckets if ttl_us is None else ()
        try:
            try:
                return await lim.admit(rid, plan.budgets, buckets, cost, want, ttl_us)
            except Unseeded:
                # Redis lost the counters: rebuild them (SQL ledger + unapplied journal) before admitting
                # anything; refused (503) if that cannot be done now.
                await self.b.reseed_if_needed()
                return await lim.admit(rid, plan.budgets, buckets, cost, want, ttl_us)
        except Unseeded:
            raise errors.limits_unavailable() from None
        except BaseException as e:
            # The script may have reserved before the failure (a timeout, a lost reply, a cancelled
            # request): release it now, idempotently, instead of holding the budget for the reservation TTL.
            release = getattr(lim, "release", None)
            if release is not None and cost:
                self.b.spawn(release(Reservation(rid, cost, want, plan.budgets, plan.buckets)))
            if isinstance(e, (OSError, ConnectionError, TimeoutError)) or type(e).__module__.startswith("redis"):
                _log_store_error("limits store unreachable", e)
                raise errors.limits_unavailable() from None
            raise

    def _refusal(self, ctx: Any, plan: Plan, d: Denied, want: int, cost: int, now: float) -> errors.APIError:
        model = ctx.model or ctx.endpoint
        if d.kind == "budget":
            scope, sid = plan.scopes[d.index]
            if scope == "credit":
                b = self.b
                return errors.credit_used_up(b.credit_cap - d.spent, b.credit_cap, cost)
            limit = plan.budgets[d.index].limit or 0
            if scope == "project":
                p = self.b.rt.snapshot.projects.get(sid)
                what = f"project `{p.name}` ({sid})" if p else f"project {sid}"
            elif scope == "api_key":
                what = f"API key `{ctx.key.name}` ({sid})"
            else:
                what = f"organization {sid}"
            return errors.spend_limit_reached(scope, what, limit, d.spent + d.reserved, cost, now, self.b.period_end)
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

    async def settle(self, ctx: Any) -> None:
        res, ctx.reservation = ctx.reservation, None
        if res is None:
            return
        extra = res.extra
        if "batch" in extra:  # POST /v1/batches: held for the batch once created (billing/batches.py), else freed
            ctx.cost_micros = 0
            if not extra.get("kept") and res.amount:
                await self._release(res)
            return
        price: Price | None = extra.get("price")  # type: ignore[assignment]
        flat: int | None = extra.get("flat")  # type: ignore[assignment]
        prompt, cached, completion = ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens
        used = prompt + completion
        cost = 0
        if ctx.cache == "hit":
            # Answered from keyplane's response cache: only the request counts (docs/caching.md).
            used = 0
        elif flat is not None:  # images, speech, audio minutes: priced from the request, billed on success
            # Billed on success, and when the provider received the call whole but its answer failed (it may
            # have run it: an upload is never sent twice, proxy/uploads.py).
            if (ctx.status and ctx.status < 400) or getattr(ctx, "upstream_received", False):
                cost = flat
                ctx.cost_input_micros = 0
                per_minute = extra.get("per_minute")
                up = getattr(ctx, "upload", None)
                if per_minute and up is not None and up.finished:  # streamed: priced at most by the size received
                    minutes = quote_mod.minutes_of(up.size)
                    cost = min(cost, minutes * per_minute)  # type: ignore[operator]
                    extra["units"] = min(int(extra.get("units") or 0), minutes * 60)  # type: ignore[call-overload]
                if per_minute and ctx.units:  # the duration the answer reports is what the provider bills
                    cost = -(-ctx.units * per_minute // 60)  # type: ignore[operator]
                ctx.units = ctx.units or int(extra.get("units") or 0)  # type: ignore[call-overload]
        elif price is not None:
            tier: TierPricing | None = extra.get("tier")  # type: ignore[assignment]
            served = getattr(ctx, "service_tier", None)
            if served is not None and tier is not None:
                price = self._served_price(ctx, tier, served, price)
            by = getattr(ctx, "modalities", None)
            if by is None and used and (price.audio_input is not None or price.audio_output is not None):
                by = _chat_audio(ctx, prompt, cached, completion)  # audio on chat completions: by its details
            if by is not None and used:  # text and audio each at its rate (a realtime response.done)
                cost, ctx.cost_input_micros = price.cost_by(by)
            elif used:
                cost = price.cost(prompt, cached, completion)
                ctx.cost_input_micros = min(cost, price.cost(prompt, cached, 0))
            elif extra.get("per_minute") and (
                (ctx.status and ctx.status < 400) or getattr(ctx, "upstream_received", False)
            ):
                # A token-priced transcription whose usage keyplane did not read (`text`, `srt`, `vtt`, a
                # `stream`), or that the provider received whole before its answer failed: billed its bound
                # (its prompt and output tokens are billed too, which no per-minute estimate bounds).
                cost = ctx.cost_input_micros = res.amount
                ctx.units = int(extra.get("units") or 0)  # type: ignore[call-overload]
            elif ctx.status and ctx.status < 400 and res.amount:
                # A success with no usage reported: bill the prompt as estimated at admission.
                used = int(extra["prompt"])  # type: ignore[call-overload]
                cost = price.cost(used, 0, 0)
                ctx.cost_input_micros = cost
            calls = getattr(ctx, "tool_calls", None)
            if calls:  # hosted tools: per call (code interpreter: per session), at the table's price
                per = extra.get("tools") or quote_mod.tool_prices(self.b.prices)  # calls the request did not show
                by_kind = quote_mod.tool_cost(per, {k: v[0] for k, v in calls.items()})  # type: ignore[arg-type]
                for k, micros in by_kind.items():
                    calls[k][1] = micros
                cost += sum(by_kind.values())
        ctx.cost_micros = cost
        if not res.amount and not res.tokens and not cost:
            return
        try:
            await self.b.limiter.settle(res, cost, used)
        except Exception as e:
            # The cost is in the usage record (and so in the SQL ledger); the Redis backend queued the
            # settle and replays it when Redis answers again (billing engine, every ledger_flush_seconds).
            _log_store_error(f"settle of {res.rid} failed; queued for replay", e)

    def _served_price(self, ctx: Any, tier: TierPricing, served: str, price: Price) -> Price:
        """The price at the tier the answer reports (cheaper or dearer than the one reserved: the provider bills
        the one that served); ``price`` when the table has no price for it or it is the one reserved."""
        factor = self.b.prices.tier_factor(tier.model, served)
        if factor is None or factor == tier.factor:
            return price
        if tier.at_default and tier.factor is not None and factor > tier.factor:
            self._learn(ctx, tier.model, served, factor)
        return tier.base if factor == MICROS else tier.base.scaled(factor)

    def _learn(self, ctx: Any, model: str, served: str, factor: int) -> None:
        """The upstream that answered served a request naming no tier at a dearer tier than it was reserved at:
        its default tier is that one, and the next such requests reserve at it (until a restart; the first ones
        in flight before this answer may still overshoot a limit: docs/limits-and-billing.md)."""
        pool: tuple[_Upstream, ...] = getattr(ctx, "pool", ())
        for d in pool:
            if d.name != ctx.upstream:
                continue
            known = self.b.prices.tier_factor(model, d.default_tier) if d.default_tier else MICROS
            if known is not None and factor > known:
                d.default_tier = served
                log.warning(
                    "upstream `%s` served a request that named no service tier at `%s`: such requests are "
                    'reserved at that tier from now on in this process (set service_tier = "%s" in its '
                    "[[upstreams]] entry so that they are from the start)",
                    d.name,
                    served[:20],
                    served[:20],
                )
            return

    async def _release(self, res: Reservation) -> None:
        try:
            await self.b.limiter.settle(res, 0, 0)
        except Exception as e:
            _log_store_error(f"release of {res.rid} failed; queued for replay", e)


def _chat_audio(ctx: Any, prompt: int, cached: int, completion: int) -> Tokens | None:
    """A chat usage that reports its audio tokens, by modality (the rest is text; cached tokens unattributed);
    None when it does not report them or was estimated (then billed at the dearest rates)."""
    audio = getattr(ctx, "audio_tokens", None)
    if audio is None or ctx.usage_estimated:
        return None
    a_in, a_out = min(audio[0], prompt), min(audio[1], completion)
    return Tokens(
        text_in=prompt - a_in, audio_in=a_in, cached_rest=cached, text_out=completion - a_out, audio_out=a_out
    )


_quiet_until = 0.0
_quieted = 0


def _log_store_error(what: str, e: BaseException) -> None:
    """One line per 10 s at most while the limits store fails, with how many were not logged."""
    global _quiet_until, _quieted
    import time

    now = time.monotonic()
    if now < _quiet_until:
        _quieted += 1
        return
    more = f" ({_quieted} more since the last message)" if _quieted else ""
    _quiet_until, _quieted = now + 10, 0
    log.error("%s: %s: %s%s", what, type(e).__name__, e, more)


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
