"""The billing engine of one process: configuration in memory, the limiter, the ledger, and the
background task that keeps them in step (reload on revision change, ledger flush, reservation sweep,
credit expiry, spend alerts, tier promotion). Nothing here runs on the request path except
:meth:`Billing.plan` (a dict lookup) and :meth:`Billing.rollover` (once a month).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from keyplane.billing import ledger as ledger_mod
from keyplane.billing import state, tiers
from keyplane.billing.prices import Price, PriceTable
from keyplane.billing.ratelimits import merge
from keyplane.limits import Bucket, BudgetRef, Limiter, Unseeded
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

log = logging.getLogger("keyplane.billing")

MONTH_TTL = 40 * 86_400  # budget counters of a month outlive it a little (late settles)
TICK = 0.1


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything admission checks for one (key, model) this month, built once and cached."""

    period: str
    price: Price | None
    budgets: tuple[BudgetRef, ...]
    scopes: tuple[tuple[str, str], ...]  # (scope, id) of each budget: api_key, project, organization, credit
    buckets: tuple[Bucket, ...]
    wheres: tuple[str, ...]  # each bucket in words, for 429 messages
    keys: tuple[str, ...]  # the budget keys, for the ledger


class Billing:
    def __init__(self, rt: Runtime, prices: PriceTable, table: tiers.TierTable, limiter: Limiter,
                 ledger: ledger_mod.Ledger, fleet: bool) -> None:
        self.rt = rt
        self.prices = prices
        self.tiers = table
        self.limiter = limiter
        self.ledger = ledger
        self.fleet = fleet
        s = rt.settings
        self.limits_enabled = s.file.limits.enabled
        self.enforce_credit = s.file.credit.enforce
        self.default_max_tokens = s.default_max_tokens
        self.cfg = state.BillingConfig()
        self.plans: dict[tuple[str, str], Plan] = {}
        self.period = ""
        self.period_end = 0
        self.credit_cap = 0
        self.credit_expiry: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._seed_lock = asyncio.Lock()
        self._reload_lock = asyncio.Lock()
        self._alert_tasks: set[asyncio.Task[Any]] = set()
        self.rollover(rt.clock.now())

    # --- configuration ---------------------------------------------------------------------------

    @property
    def org_id(self) -> str:
        return self.rt.snapshot.org_id

    @property
    def credit_key(self) -> str:
        return f"all:credit:{self.org_id}"

    @property
    def credit_active(self) -> bool:
        """Credit use is counted once a grant exists (or [credit] enforce = true)."""
        return bool(self.cfg.grants) or self.enforce_credit is True

    @property
    def credit_enforced(self) -> bool:
        if self.enforce_credit is not None:
            return self.enforce_credit
        return bool(self.cfg.grants)

    async def reload(self) -> None:
        # One at a time: a slow background reload must not land after (and undo) a newer one.
        async with self._reload_lock:
            rev = self.rt.snapshot.revision
            self.cfg = await state.load(self.rt.engine, self.tiers, rev)
            self._credit_changed()

    def _credit_changed(self) -> None:
        now = self.rt.clock.now()
        self.credit_cap = self.cfg.credit_cap(now)
        self.credit_expiry = self.cfg.next_expiry(now)
        self.plans = {}

    def rollover(self, now: float) -> None:
        """A new month (or the first request): new budget counters, plans rebuilt."""
        self.period = state.period_of(now)
        self.period_end = state.period_bounds(now)[1]
        self.plans = {}
        forget = getattr(self.limiter, "forget_before", None)
        if forget is not None:  # in-process counters of past months that nothing holds any more
            forget({self.period, "all"})

    def plan(self, entry: KeyEntry, model: str) -> Plan:
        p = self.plans.get((entry.id, model))
        if p is None:
            p = self._build(entry, model)
            if len(self.plans) > 100_000:
                self.plans = {}
            self.plans[(entry.id, model)] = p
        return p

    def _budget(self, scope: str, sid: str) -> BudgetRef:
        lim = self.cfg.spend_limits.get((scope, sid))
        limit = lim[0] if lim is not None and lim[1] else None
        return BudgetRef(f"{self.period}:{scope}:{sid}", limit, MONTH_TTL)

    def _build(self, entry: KeyEntry, model: str) -> Plan:
        pid = entry.project_id or ""
        scopes: list[tuple[str, str]] = [("api_key", entry.id), ("project", pid), ("organization", self.org_id)]
        budgets = [self._budget(s, i) for s, i in scopes]
        if self.credit_active:
            budgets.append(BudgetRef(self.credit_key, self.credit_cap if self.credit_enforced else None, 0))
            scopes.append(("credit", self.org_id))
        buckets: list[Bucket] = []
        wheres: list[str] = []
        if self.limits_enabled:
            limits = self.effective_limits("project", pid, model)
            if any(limits):
                name = self.rt.snapshot.projects.get(pid)
                buckets.append(Bucket(f"p:{pid}:{model}", limits))
                wheres.append(f"project `{name.name}` ({pid})" if name else f"project {pid}")
            if entry.id in self.cfg.keys_with_limits:
                klimits = self.key_limits(entry.id, model)
                if any(klimits):
                    buckets.append(Bucket(f"k:{entry.id}:{model}", klimits))
                    wheres.append(f"API key `{entry.name}` ({entry.id})")
        return Plan(self.period, self.prices.lookup(model), tuple(budgets), tuple(scopes), tuple(buckets),
                    tuple(wheres), tuple(b.key for b in budgets))

    def effective_limits(self, scope: str, sid: str, model: str) -> tuple[int, int, int, int]:
        """A project's limits for a model: its overrides over the tier's defaults."""
        return merge(self.tiers.limits(self.cfg.tier, model), self.cfg.overrides.get((scope, sid, model)))

    def key_limits(self, key_id: str, model: str) -> tuple[int, int, int, int]:
        """A key's own limits (none unless set)."""
        return merge((0, 0, 0, 0), self.cfg.overrides.get(("api_key", key_id, model)))

    # --- counters ----------------------------------------------------------------------------------

    async def seed(self, only_if_needed: bool = False) -> None:
        """Budget counters from the SQL ledger: this month's spend and the credit used."""
        async with self._seed_lock:
            is_seeded = getattr(self.limiter, "is_seeded", None)
            if only_if_needed and is_seeded is not None and await is_seeded():
                return  # another request (or instance) rebuilt them while this one waited
            spent = await ledger_mod.period_spend(self.rt.engine, self.period)
            ttls = dict.fromkeys(spent, MONTH_TTL)
            if self.cfg.grants:
                spent[self.credit_key] = self.cfg.credit_used()
                ttls[self.credit_key] = 0
            for k in list(spent):  # this instance's own unflushed spend is not in SQL yet
                spent[k] += self.ledger.unflushed(k)
            await self.limiter.seed(spent, ttls)

    async def reseed_if_needed(self) -> None:
        is_seeded = getattr(self.limiter, "is_seeded", None)
        if is_seeded is not None and not await is_seeded():
            log.warning("the shared budget counters are gone (Redis flushed?): rebuilding them from SQL")
            await self.seed()

    async def spent(self, scope: str, sid: str, period: str | None = None) -> tuple[int, int]:
        """(spent, reserved) micro-dollars of a scope this month (credit: in total)."""
        key = self.credit_key if scope == "credit" else f"{period or self.period}:{scope}:{sid}"
        try:
            return (await self.limiter.spent([key]))[key]
        except Unseeded:
            return 0, 0

    # --- background ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="billing")

    async def _run(self) -> None:
        mono = time.monotonic
        next_flush = next_second = mono()
        next_tier = mono() + 5
        quiet_until = 0.0
        flush_every = self.rt.settings.ledger_flush_seconds
        from keyplane.billing import spend

        while True:
            await asyncio.sleep(TICK)
            try:
                if self.rt.snapshot.revision != self.cfg.revision:
                    await self.reload()
                t = mono()
                if t >= next_flush:
                    next_flush = t + flush_every
                    await self.flush()
                if t >= next_second:
                    next_second = t + 1.0
                    await self.limiter.sweep()
                    now = self.rt.clock.now()
                    if self.credit_expiry is not None and now >= self.credit_expiry:
                        self._credit_changed()
                    if self.fleet:
                        await self.reseed_if_needed()
                    await spend.check_alerts(self)
                if t >= next_tier:
                    next_tier = t + 60
                    await self.promote()
            except Exception as e:  # the store or Redis may be briefly unreachable: try again next tick
                if mono() >= quiet_until:  # once every 30 s at most, not every tick
                    quiet_until = mono() + 30
                    log.warning("billing background step failed (%s: %s); will retry", type(e).__name__, e,
                                exc_info=log.isEnabledFor(logging.DEBUG))

    async def flush(self) -> None:
        allocated = await self.ledger.flush(self.rt.clock.now())
        if allocated:
            grants = [state.Grant(g.id, g.amount_micros, g.used_micros + allocated.get(g.id, 0), g.created_at,
                                  g.expires_at) for g in self.cfg.grants]
            self.cfg.grants = tuple(grants)
            cap = self.cfg.credit_cap(self.rt.clock.now())
            if cap != self.credit_cap:
                self._credit_changed()

    async def promote(self) -> tuple[str, str] | None:
        now = self.rt.clock.now()
        t = self.tiers
        if t.pinned or t.index(t.qualified(self.cfg.standing, now).name) <= t.index(self.cfg.tier):
            return None  # nothing to do: no write transaction
        async with self.rt.sessions() as s, s.begin():
            moved = await tiers.promote(s, self.tiers, now)
        if moved:
            log.info("usage tier promoted from %s to %s", *moved)
            await self.rt.refresher.refresh()
            await self.reload()
        return moved

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._alert_tasks.add(task)
        task.add_done_callback(self._alert_tasks.discard)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._alert_tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 5)
        try:
            await self.flush()
        except Exception:
            log.error("the last spend ledger flush failed; %d counters not written", len(self.ledger.pending),
                      exc_info=True)
        await self.limiter.close()
