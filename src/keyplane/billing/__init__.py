"""Limits and billing: prices, prepaid credit, spend limits and alerts, usage tiers, rate limits.

``start(rt)`` (called by the app before the proxy is built) loads the price table and the
tokenizers, the billing configuration from SQL, picks the limiter (in-process, or Redis when
KEYPLANE_REDIS_URL is set), seeds the budget counters from the SQL ledger, and returns the admission
and settle steps (keyplane.pipeline) and the admin API endpoints. docs/limits-and-billing.md
describes the behaviour; the modules: price (the arithmetic), prices and prices_file (the table), quote and
quote_* (what a request may cost), tiers, credit, spend, spend_alerts, spend_firing, ratelimits (control
plane), engine (state and background work), admission and settle (the request path; admission_replies its
refusals, admission_audio its large per-minute audio uploads), batches and batch_* (batch jobs), job_poll,
ledger (SQL), routes, cli.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyplane.runtime import Runtime


async def start(rt: Runtime) -> Any:
    from keyplane.app import Feature
    from keyplane.billing.admission_audio import MeasuringAdmission
    from keyplane.billing.engine import Billing
    from keyplane.billing.ledger import Ledger
    from keyplane.billing.prices import PriceTable
    from keyplane.billing.routes import ENDPOINTS
    from keyplane.billing.tiers import TierTable
    from keyplane.limits import Limiter, encodings

    s = rt.settings
    await asyncio.to_thread(encodings.load)
    prices = PriceTable.from_config(s.file.prices, s.prices_file)
    table = TierTable(s.file.tiers, s.file.limits.tier)
    limiter: Limiter
    if s.redis_url:
        from keyplane.limits.redis_backend import RedisLimiter

        limiter = RedisLimiter(
            s.redis_url, s.redis_prefix, s.reservation_ttl_seconds, timeout=getattr(s, "redis_timeout_seconds", 1.0)
        )
    else:
        from keyplane.limits.memory import MemoryLimiter

        limiter = MemoryLimiter(rt.clock.now, s.reservation_ttl_seconds)
    billing = Billing(rt, prices, table, limiter, Ledger(rt.engine), fleet=bool(s.redis_url))
    await billing.reload()
    if s.redis_url:
        try:
            await billing.reseed_if_needed()
        except Exception as e:  # Redis down at start: admission answers 503 until it is back
            logging.getLogger("keyplane.billing").error(
                "Redis unreachable at start (%s: %s); requests are refused until it answers", type(e).__name__, e
            )
    else:
        await billing.seed()
    await billing.promote()
    admission = MeasuringAdmission(billing)  # admission, large per-minute audio measured first (admission_audio)
    rt.features.billing = billing
    billing.start()
    return Feature(endpoints=list(ENDPOINTS), stop=billing.stop, billing=admission)
