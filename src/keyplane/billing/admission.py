"""Admission: what limits and billing do to every proxied request before the upstream call.

admit (keyplane.pipeline) runs for every call the provider bills (``ctx.spending``), with or without a
``model``: :mod:`keyplane.billing.quote` says what it may cost (tokens, images, characters, minutes,
or nothing keyplane can price), then that cost and its tokens are checked and reserved against every
budget and bucket that applies, in one atomic step of the limiter; the x-ratelimit-* headers are
added to the response (billing/admission_replies.py, as is the error of a refused request). Where a spend
limit or enforced credit applies (*money controls*), a call that cannot be priced or bounded is refused, and
every spending call needs room in the budget; where none applies, an unpriced model is served and recorded
at cost 0, with a warning the first time. A request naming no service tier is reserved at the dearest tier
its upstreams are known to serve by default (:meth:`Admission._default_tier`).

settle, the step after the answer, is :class:`~keyplane.billing.settle.Settle` (billing/settle.py), this
class's base.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from typing import TYPE_CHECKING

from keyplane import errors
from keyplane.billing import quote as quote_mod
from keyplane.billing.admission_replies import headers, refusal
from keyplane.billing.engine import Billing, Plan
from keyplane.billing.price import MICROS
from keyplane.billing.quote_media import TRANSCRIBE
from keyplane.billing.ratelimits import limits_model
from keyplane.billing.settle import Settle, Upstream, log_store_error
from keyplane.limits import REBUILD_GRACE_US, Denied, Granted, Rebuilding, Reservation, Unseeded

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext

log = logging.getLogger("keyplane.billing")

BIG_BODY = 64 * 1024  # bodies larger than this are tokenized in a thread, not on the event loop


def _form(ctx: RequestContext) -> dict[str, str] | None:
    """The multipart text fields the proxy read (with the Content-Type's boundary), if it kept them."""
    form = ctx.form
    return form if isinstance(form, dict) else None


def _redis_error(e: BaseException) -> bool:
    """A redis-py error, by its type. redis is imported only where a Redis store is configured (a serving process
    without one never loads it, nor what it pulls in), and an error from it means it was."""
    mod = sys.modules.get("redis.exceptions")
    return mod is not None and isinstance(e, mod.RedisError)


class Admission(Settle):
    def __init__(self, billing: Billing) -> None:
        self.b = billing
        self.clock = billing.rt.clock
        lim = billing.limiter
        self._sync_admit = lim.synchronous()
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

    async def admit(self, ctx: RequestContext) -> None:
        if not ctx.spending:
            return
        b = self.b
        if b.behind():  # the limits of a key the snapshot serves are never older than the key
            await b.current()
        now = self.clock.now()
        if now >= b.period_end:
            b.rollover(now)
        args = (
            b.prices,
            ctx.endpoint,
            ctx.model,
            ctx.body,
            ctx.max_tokens,
            ctx.context_ref,
            _form(ctx),
            b.default_max_tokens,
            ctx.upload,
            self._default_tier(ctx),
        )
        # Off the event loop: a large body's tokens, and any transcription's audio (an MP4's AAC blocks are read in
        # Python: billing/audio_mp4.py).
        off_loop = len(ctx.body) > BIG_BODY or ctx.endpoint in TRANSCRIBE
        q = await asyncio.to_thread(quote_mod.quote, *args) if off_loop else quote_mod.quote(*args)
        model = q.model
        if ctx.model is None and model:  # a call naming no model (an image call): recorded as the model billed
            ctx.model = model
        if model:
            plan = b.plan(ctx.key, limits_model(b, ctx.key.id, ctx.key.project_id or "", model))
        else:  # no model: the budgets only (there is no per-model bucket to count it in)
            plan = dataclasses.replace(b.plan(ctx.key, ""), buckets=(), wheres=())
        controlled = plan.controlled
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
            raise refusal(self.b, ctx, plan, result, want, cost, now)
        if q.body is not None:  # the output limit reserved, given to the upstream (the handler forwards ctx.body)
            ctx.body = q.body
            ctx.max_tokens = q.out_limit
        if plan.buckets:
            ctx.extra_headers.extend(headers(plan, result))
        ctx.reservation = res = Reservation(
            rid,
            cost,
            want,
            plan.budgets,
            plan.buckets,
            {
                "plan": plan,
                "prompt": q.prompt,
                "unseen_input": q.unseen_input,
                "price": q.price,
                "flat": q.cost if q.flat and q.unpriced is None else None,
                "units": q.units,
                "tools": q.tools,
                "per_minute": q.per_minute,
                "tier": q.tier,
                "task": asyncio.current_task(),  # renewal stops if it ends unsettled (billing/renewal.py)
            },
        )
        if cost:  # held until settled, however long the request runs (renewed: billing/renewal.py)
            b.renewal.in_flight[rid] = res
            # Under a money control, the request's hold where a killed process leaves it (usage/holds.py), before
            # it goes upstream: billed at its reservation if the process ends before its record is journaled.
            recorder = b.rt.features.usage_recorder
            if controlled and recorder is not None:
                try:
                    ctx.hold = recorder.hold(ctx, cost, now)
                except OSError as e:
                    await self._unheld(ctx, res, e)

    async def _unheld(self, ctx: RequestContext, res: Reservation, e: OSError) -> None:
        """The journal cannot take the hold (a full disk): refused (503), its reservation released."""
        log_store_error("the usage journal cannot hold a request under a money control", e)
        ctx.reservation = None
        self.b.renewal.in_flight.pop(res.rid, None)
        await self._release(res)
        raise errors.usage_journal_unavailable()

    def _default_tier(self, ctx: RequestContext) -> str | None:
        """The dearest tier the request's upstreams are known to serve a request naming none at, if dearer than
        the standard one (a tier the table does not price for the model wins: the quote is then an estimate).
        Usually no upstream has one: a few attribute reads."""
        pool: tuple[Upstream, ...] = ctx.pool
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

    async def _admit_batch(self, ctx: RequestContext, plan: Plan, controlled: bool, now: float) -> None:
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
            raise refusal(self.b, ctx, plan, result, 0, cost, now)
        ctx.reservation = Reservation(
            rid, cost, 0, plan.budgets, (), {"plan": plan, "batch": est, "input_file_id": fid}
        )

    async def _own_models(self, ctx: RequestContext, models: list[str]) -> None:
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
                # anything; refused (503) if that cannot be done now. Just rebuilt after a loss: wait while
                # every instance holds its running requests' reservations again (limits.Rebuilding).
                await self.b.reseed_if_needed()
                deadline = time.monotonic() + REBUILD_GRACE_US / 1e6 + 1
                while True:
                    try:
                        return await lim.admit(rid, plan.budgets, buckets, cost, want, ttl_us)
                    except Rebuilding:
                        if time.monotonic() >= deadline:
                            raise
                        await asyncio.sleep(0.1)
        except Unseeded:
            raise errors.limits_unavailable() from None
        except BaseException as e:
            # The script may have reserved before the failure (a timeout, a lost reply, a cancelled
            # request): release it now, idempotently, instead of holding the budget for the reservation TTL.
            if cost:
                self.b.spawn(lim.release(Reservation(rid, cost, want, plan.budgets, plan.buckets)))
            if isinstance(e, (OSError, ConnectionError, TimeoutError)) or _redis_error(e):
                log_store_error("limits store unreachable", e)
                raise errors.limits_unavailable() from None
            raise
