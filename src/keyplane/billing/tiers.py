"""Usage tiers: default rate limits that rise with what the organization has paid, and how long ago.

The platform's rule (reference/openai-surface.md "Tiers"): a tier is reached once the amount paid
(here: the credit grants, in total) and the days since the first payment both pass its threshold.
keyplane promotes the organization automatically, never demotes it, and writes a
``usage_tier.promoted`` audit entry. ``[[tiers]]`` in keyplane.toml replaces the shipped table;
``[limits] tier = "name"`` pins one.

Each tier maps model globs to default limits (0: none); the most specific glob wins, as for prices.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control
from keyplane.billing.config import Tier, TierRateLimit
from keyplane.billing.models import BillingState, CreditGrant

DAY = 86_400


def _t(name: str, paid: float, days: int, usage: float, rpm: int, tpm: int, rpd: int = 0) -> Tier:
    return Tier(
        name=name,
        min_paid=paid,
        min_days=days,
        usage_limit=usage,
        rate_limits={"*": TierRateLimit(rpm=rpm, tpm=tpm, rpd=rpd)},
    )


# The platform's qualification figures; limits generous enough for a self-hosted gateway's own
# traffic (they are defaults: set any project's or key's own limits through the API).
DEFAULT_TIERS: tuple[Tier, ...] = (
    _t("free", 0, 0, 100, 500, 2_000_000, 10_000),
    _t("tier-1", 5, 0, 100, 1_000, 5_000_000),
    _t("tier-2", 50, 7, 500, 5_000, 10_000_000),
    _t("tier-3", 100, 7, 1_000, 10_000, 30_000_000),
    _t("tier-4", 250, 14, 5_000, 30_000, 100_000_000),
    _t("tier-5", 1_000, 30, 200_000, 100_000, 1_000_000_000),
)


def check_tiers(tiers: list[Tier], pinned: str) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    for i, t in enumerate(tiers):
        where = f"$.tiers[{i}]"
        if t.name in names:
            problems.append(f"{where}.name: duplicate tier name {t.name!r}")
        names.add(t.name)
        if t.min_paid < 0 or t.min_days < 0:
            problems.append(f"{where}: min_paid and min_days must be >= 0")
        for glob, lim in t.rate_limits.items():
            if min(lim.rpm, lim.tpm, lim.rpd, lim.tpd) < 0:
                problems.append(f"{where}.rate_limits.{glob}: limits must be >= 0 (0: no limit)")
    known = names or {t.name for t in DEFAULT_TIERS}
    if pinned and pinned not in known:
        problems.append(f"$.limits.tier: unknown tier {pinned!r} (tiers: {', '.join(sorted(known))})")
    return problems


@dataclass(frozen=True, slots=True)
class Standing:
    """What the organization has paid and since when (for qualification and the tier endpoint)."""

    paid_cents: int
    first_payment_at: int | None

    def days(self, now: float) -> int:
        return 0 if self.first_payment_at is None else int((now - self.first_payment_at) // DAY)


class TierTable:
    def __init__(self, tiers: list[Tier] | tuple[Tier, ...], pinned: str = "") -> None:
        self.tiers = list(tiers) or list(DEFAULT_TIERS)
        self.by_name = {t.name: t for t in self.tiers}
        self.pinned = pinned
        self._limits_cache: dict[tuple[str, str], tuple[int, int, int, int]] = {}

    @property
    def lowest(self) -> str:
        return self.tiers[0].name

    def index(self, name: str) -> int:
        for i, t in enumerate(self.tiers):
            if t.name == name:
                return i
        return 0

    def qualified(self, standing: Standing, now: float) -> Tier:
        """The highest tier whose thresholds are all met."""
        best = self.tiers[0]
        for t in self.tiers:
            if (
                standing.paid_cents >= round(t.min_paid * 100)
                and standing.days(now) >= t.min_days
                and (t.min_paid <= 0 or standing.first_payment_at is not None)
            ):
                best = t
        return best

    def next_after(self, name: str) -> Tier | None:
        i = self.index(name)
        return self.tiers[i + 1] if i + 1 < len(self.tiers) else None

    def limits(self, tier: str, model: str) -> tuple[int, int, int, int]:
        """(RPM, TPM, RPD, TPD) defaults of ``tier`` for ``model``; 0 where none."""
        key = (tier, model)
        got = self._limits_cache.get(key)
        if got is not None:
            return got
        t = self.by_name.get(tier) or self.tiers[0]
        found: TierRateLimit | None = t.rate_limits.get(model)
        if found is None:
            best = -1
            for glob, lim in t.rate_limits.items():
                score = sum(1 for c in glob if c not in "*?[]")
                if score > best and fnmatch.fnmatchcase(model, glob):
                    best, found = score, lim
        got = (found.rpm, found.tpm, found.rpd, found.tpd) if found else (0, 0, 0, 0)
        if len(self._limits_cache) < 10_000:
            self._limits_cache[key] = got
        return got


async def standing(s: AsyncSession) -> Standing:
    paid, first = (
        await s.execute(select(func.coalesce(func.sum(CreditGrant.amount_cents), 0), func.min(CreditGrant.created_at)))
    ).one()
    return Standing(int(paid or 0), first)


async def current_tier(s: AsyncSession, table: TierTable) -> str:
    if table.pinned:
        return table.pinned
    v = (await s.execute(select(BillingState.value).where(BillingState.name == "usage_tier"))).scalar()
    return v if v in table.by_name else table.lowest


async def tier_since(s: AsyncSession) -> int | None:
    """When the organization reached its present tier (unix seconds), if it was promoted since keyplane keeps it."""
    since = (await s.execute(select(BillingState.value).where(BillingState.name == "usage_tier_at"))).scalar()
    return int(since) if since else None


async def promote(s: AsyncSession, table: TierTable, now: float) -> tuple[str, str] | None:
    """Move the organization up to the tier it now qualifies for; (old, new) when it moved.

    Runs in the caller's transaction, with its audit entry and a revision bump (every instance then
    reloads its limits)."""
    if table.pinned:
        return None
    old = await current_tier(s, table)
    st = await standing(s)
    new = table.qualified(st, now)
    if table.index(new.name) <= table.index(old):
        return None
    row = (await s.execute(select(BillingState).where(BillingState.name == "usage_tier"))).scalar()
    if row is None:
        s.add(BillingState(name="usage_tier", value=new.name))
    else:
        row.value = new.name
    at = int(now)
    since = (await s.execute(select(BillingState).where(BillingState.name == "usage_tier_at"))).scalar()
    if since is None:
        s.add(BillingState(name="usage_tier_at", value=str(at)))
    else:
        since.value = str(at)
    details: dict[str, Any] = {
        "id": "usage_tier",
        "from": old,
        "to": new.name,
        "paid_cents": st.paid_cents,
        "days_since_first_payment": st.days(now),
    }
    await control.audit(s, control.SYSTEM_ACTOR, "usage_tier.promoted", details, resource_id="usage_tier", at=at)
    await control.bump_revision(s)
    return old, new.name


def tier_object(table: TierTable, name: str, st: Standing, now: float, since: int | None) -> dict[str, Any]:
    t = table.by_name.get(name) or table.tiers[0]
    nxt = table.next_after(t.name)
    return {
        "object": "organization.usage_tier",
        "name": t.name,
        "since": since,
        "pinned": bool(table.pinned),
        "paid": st.paid_cents,
        "first_payment_at": st.first_payment_at,
        "days_since_first_payment": st.days(now),
        "usage_limit": round(t.usage_limit * 100) if t.usage_limit is not None else None,
        "next": None
        if nxt is None
        else {"name": nxt.name, "min_paid": round(nxt.min_paid * 100), "min_days": nxt.min_days},
    }
