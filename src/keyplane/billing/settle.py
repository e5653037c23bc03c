"""Settle: what a proxied request cost, billed after its answer (keyplane.pipeline, order 10).

The actual cost is computed from the reservation admission made (:mod:`keyplane.billing.admission`) and
what the answer reports: images, speech and audio minutes flat, billed on success (a transcription by the
duration its answer reports, else by the file's measured length or its estimate); token usage at the
model's price, text and audio each at its rate; hosted tool calls per call (code interpreter: per
session). It is committed, the rest released, the token buckets corrected, ``ctx.cost_micros`` filled for
metering, and the cost queued for the SQL ledger.

Service tiers: a token request is billed at the tier its answer says served it (``ctx.service_tier``), not
the one it asked for: one naming none (or `auto`) is served at the provider project's default tier, which
may be priority. Such a request is reserved at the dearest tier its upstreams are known to serve by default
(their ``service_tier`` setting, or a dearer tier an earlier answer reported: :meth:`Settle._learn`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from keyplane.billing.engine import Billing
from keyplane.billing.price import MICROS, Price, Tokens
from keyplane.billing.quote_media import IMAGES, audio_length, minutes_of
from keyplane.billing.quote_record import TierPricing
from keyplane.billing.quote_tools import tool_cost, tool_prices
from keyplane.limits import Reservation

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext

log = logging.getLogger("keyplane.billing")


class Upstream(Protocol):
    """What billing reads and teaches of an upstream a request may go to (keyplane.proxy.router.Deployment)."""

    @property
    def name(self) -> str: ...

    default_tier: str | None


class Settle:
    """The settle step of :class:`~keyplane.billing.admission.Admission` (its base class)."""

    b: Billing

    async def settle(self, ctx: RequestContext) -> None:
        res, ctx.reservation = ctx.reservation, None
        if res is None:
            return
        self.b.renewal.in_flight.pop(res.rid, None)  # no longer renewed (billing/renewal.py)
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
            if (ctx.status and ctx.status < 400) or ctx.upstream_received:
                cost = flat
                ctx.cost_input_micros = 0
                if price is not None and ctx.modalities is not None and ctx.endpoint in IMAGES:
                    # A GPT image model's answer reports its usage (text and image input, image output): what
                    # the provider bills, less or more than the per-image list price and allowances reserved.
                    cost, ctx.cost_input_micros = price.cost_by(ctx.modalities)
                per_minute = extra.get("per_minute")
                up = ctx.upload
                # streamed: priced at most by the size received (a file measured before admission, by its length)
                if per_minute and up is not None and up.finished and audio_length(ctx.form) is None:
                    minutes = minutes_of(up.size)
                    cost = min(cost, minutes * per_minute)  # type: ignore[operator]
                    extra["units"] = min(int(extra.get("units") or 0), minutes * 60)  # type: ignore[call-overload]
                if per_minute and ctx.units:  # the duration the answer reports is what the provider bills
                    cost = -(-ctx.units * per_minute // 60)  # type: ignore[operator]
                ctx.units = ctx.units or int(extra.get("units") or 0)  # type: ignore[call-overload]
        elif price is not None:
            tier: TierPricing | None = extra.get("tier")  # type: ignore[assignment]
            served = ctx.service_tier
            if served is not None and tier is not None:
                price = self._served_price(ctx, tier, served, price)
            by = ctx.modalities
            if by is None and used and (price.audio_input is not None or price.audio_output is not None):
                by = _chat_audio(ctx, prompt, cached, completion)  # audio on chat completions: by its details
            if by is not None and used:  # text and audio each at its rate (a realtime response.done)
                cost, ctx.cost_input_micros = price.cost_by(by)
            elif used:
                cost = price.cost(prompt, cached, completion)
                ctx.cost_input_micros = min(cost, price.cost(prompt, cached, 0))
            elif extra.get("per_minute") and ((ctx.status and ctx.status < 400) or ctx.upstream_received):
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
            calls = ctx.tool_calls
            if calls:  # hosted tools: per call (code interpreter: per session), at the table's price
                per = extra.get("tools") or tool_prices(self.b.prices)  # calls the request did not show
                by_kind = tool_cost(per, {k: v[0] for k, v in calls.items()})  # type: ignore[arg-type]
                for k, micros in by_kind.items():
                    calls[k][1] = micros
                cost += sum(by_kind.values())
        cost = max(cost, 0)  # whatever an answer reports, a call never refunds a budget
        ctx.cost_micros = cost
        if not res.amount and not res.tokens and not cost:
            return
        try:
            await self.b.limiter.settle(res, cost, used)
        except Exception as e:
            # The cost is in the usage record (and so in the SQL ledger); the Redis backend queued the
            # settle and replays it when Redis answers again (billing engine, every ledger_flush_seconds).
            log_store_error(f"settle of {res.rid} failed; queued for replay", e)

    def _served_price(self, ctx: RequestContext, tier: TierPricing, served: str, price: Price) -> Price:
        """The price at the tier the answer reports (cheaper or dearer than the one reserved: the provider bills
        the one that served); ``price`` when the table has no price for it or it is the one reserved."""
        factor = self.b.prices.tier_factor(tier.model, served)
        if factor is None or factor == tier.factor:
            return price
        if tier.at_default and tier.factor is not None and factor > tier.factor:
            self._learn(ctx, tier.model, served, factor)
        return tier.base if factor == MICROS else tier.base.scaled(factor)

    def _learn(self, ctx: RequestContext, model: str, served: str, factor: int) -> None:
        """The upstream that answered served a request naming no tier at a dearer tier than it was reserved at:
        its default tier is that one, and the next such requests reserve at it (until a restart; the first ones
        in flight before this answer may still overshoot a limit: docs/limits-and-billing.md)."""
        pool: tuple[Upstream, ...] = ctx.pool
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
            log_store_error(f"release of {res.rid} failed; queued for replay", e)


def _chat_audio(ctx: RequestContext, prompt: int, cached: int, completion: int) -> Tokens | None:
    """A chat usage that reports its audio tokens, by modality (the rest is text; cached tokens unattributed);
    None when it does not report them or was estimated (then billed at the dearest rates)."""
    audio = ctx.audio_tokens
    if audio is None or ctx.usage_estimated:
        return None
    a_in, a_out = min(audio[0], prompt), min(audio[1], completion)
    return Tokens(
        text_in=prompt - a_in, audio_in=a_in, cached_rest=cached, text_out=completion - a_out, audio_out=a_out
    )


_quiet_until = 0.0
_quieted = 0


def log_store_error(what: str, e: BaseException) -> None:
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
