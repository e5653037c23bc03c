"""The billing configuration every request reads: spend limits, rate-limit overrides, credit grants,
spend alerts and the usage tier, loaded from SQL into memory (DESIGN.md hot-path rule 1).

It is reloaded whenever the control plane's revision moves (every change here bumps it in the same
transaction, like keys and projects), so the request path never runs SQL.
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyplane.billing import tiers
from keyplane.billing.models import BillingState, CreditGrant, RateLimitOverride, SpendAlert, SpendLimit

CENT = 10_000  # micro-dollars per cent


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    amount_micros: int
    used_micros: int
    created_at: int
    expires_at: int | None

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    scope: str  # organization | project
    scope_id: str
    threshold_micros: int
    recipients: tuple[str, ...]
    subject_prefix: str | None
    fired_period: str | None


@dataclass(slots=True)
class BillingConfig:
    revision: int = -1
    # (scope, scope_id) -> (threshold in micro-dollars, enforcing)
    spend_limits: dict[tuple[str, str], tuple[int, bool]] = field(default_factory=dict)
    # (scope, scope_id, model) -> (rpm, tpm, rpd, tpd), None where the default applies
    overrides: dict[tuple[str, str, str], tuple[int | None, int | None, int | None, int | None]] = field(
        default_factory=dict
    )
    keys_with_limits: frozenset[str] = frozenset()
    grants: tuple[Grant, ...] = ()
    alerts: tuple[Alert, ...] = ()
    tier: str = ""
    standing: tiers.Standing = field(default_factory=lambda: tiers.Standing(0, None))

    def credit_cap(self, now: float) -> int:
        """What may be used in total: every grant, less what expired unused."""
        cap = 0
        for g in self.grants:
            cap += g.amount_micros if g.active(now) else min(g.used_micros, g.amount_micros)
        return cap

    def credit_used(self) -> int:
        return sum(g.used_micros for g in self.grants)

    def next_expiry(self, now: float) -> int | None:
        ends = [g.expires_at for g in self.grants if g.expires_at is not None and g.expires_at > now]
        return min(ends) if ends else None


async def load(engine: AsyncEngine, table: tiers.TierTable, revision: int) -> BillingConfig:
    async with engine.connect() as conn:
        return await load_from(conn, table, revision)


async def load_from(conn: AsyncConnection, table: tiers.TierTable, revision: int) -> BillingConfig:
    limits = (
        await conn.execute(
            select(SpendLimit.scope, SpendLimit.scope_id, SpendLimit.threshold_cents, SpendLimit.enforcing)
        )
    ).all()
    overrides = (await conn.execute(select(*RateLimitOverride.__table__.c))).all()
    grants = (
        await conn.execute(
            select(
                CreditGrant.id,
                CreditGrant.amount_cents,
                CreditGrant.used_micros,
                CreditGrant.created_at,
                CreditGrant.expires_at,
            ).order_by(CreditGrant.seq)
        )
    ).all()
    alerts = (
        await conn.execute(
            select(
                SpendAlert.id,
                SpendAlert.scope,
                SpendAlert.scope_id,
                SpendAlert.threshold_cents,
                SpendAlert.recipients,
                SpendAlert.subject_prefix,
                SpendAlert.fired_period,
            ).order_by(SpendAlert.seq)
        )
    ).all()
    state = dict((await conn.execute(select(BillingState.name, BillingState.value))).all())
    cfg = BillingConfig(revision=revision)
    cfg.spend_limits = {(r.scope, r.scope_id): (r.threshold_cents * CENT, bool(r.enforcing)) for r in limits}
    cfg.overrides = {
        (r.scope, r.scope_id, r.model): (
            r.max_requests_per_1_minute,
            r.max_tokens_per_1_minute,
            r.max_requests_per_1_day,
            r.max_tokens_per_1_day,
        )
        for r in overrides
    }
    cfg.keys_with_limits = frozenset(r.scope_id for r in overrides if r.scope == "api_key")
    cfg.grants = tuple(Grant(g.id, g.amount_cents * CENT, g.used_micros, g.created_at, g.expires_at) for g in grants)
    cfg.alerts = tuple(
        Alert(
            a.id,
            a.scope,
            a.scope_id,
            a.threshold_cents * CENT,
            tuple(orjson.loads(a.recipients)),
            a.subject_prefix,
            a.fired_period,
        )
        for a in alerts
    )
    tier = table.pinned or state.get("usage_tier") or table.lowest
    cfg.tier = tier if tier in table.by_name else table.lowest
    paid = sum(g.amount_cents for g in grants)
    cfg.standing = tiers.Standing(paid, min((g.created_at for g in grants), default=None))
    return cfg


# --- periods ---------------------------------------------------------------------------------------


def period_of(now: float) -> str:
    """The UTC calendar month of ``now``: spend limits and alerts count per month."""
    return _period_of_day(int(now // 86400))


@functools.lru_cache(maxsize=64)
def _period_of_day(day: int) -> str:
    """Months start at a UTC midnight, so the day decides the month (the ledger asks once per record)."""
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m")


def period_bounds(now: float) -> tuple[int, int]:
    """(start, end) unix seconds of the month of ``now``."""
    d = datetime.fromtimestamp(now, UTC)
    start = calendar.timegm((d.year, d.month, 1, 0, 0, 0))
    y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return start, calendar.timegm((y, m, 1, 0, 0, 0))
